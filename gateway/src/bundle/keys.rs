//! Ed25519 keys as JWKs (RFC 8037), identified by their RFC 7638 thumbprint.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("no randomness available: {0}")]
    Random(String),
}

#[derive(Serialize, Deserialize)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    usage: Option<String>,
}

/// RFC 7638 thumbprint of an Ed25519 public key: base64url(SHA-256 of the canonical JWK).
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// A verifying key with its key id.
#[derive(Debug, Clone)]
pub struct PublicKey {
    kid: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn inner(&self) -> &ed25519_dalek::VerifyingKey {
        &self.key
    }

    /// The key as a public JWK (JSON).
    pub fn to_jwk(&self) -> String {
        let x = B64.encode(self.key.as_bytes());
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            d: None,
            kid: Some(self.kid.clone()),
            alg: Some("EdDSA".into()),
            usage: Some("sig".into()),
        };
        serde_json::to_string_pretty(&jwk).unwrap_or_default()
    }

    pub fn from_jwk(text: &str) -> Result<Self, String> {
        let jwk: Jwk = serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(format!("expected an Ed25519 (OKP) key, found {}/{}", jwk.kty, jwk.crv));
        }
        let bytes: [u8; 32] =
            B64.decode(&jwk.x).ok().and_then(|b| b.try_into().ok()).ok_or("x is not a 32-byte base64url value")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
        Ok(Self { kid: jwk.kid.unwrap_or_else(|| thumbprint(&jwk.x)), key })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        Self::from_jwk(&text).map_err(|m| file_error(path, m))
    }

    /// Loads a file holding one public JWK or a JWK Set (`{"keys": [...]}`), as a
    /// control plane publishes after a key rotation.
    pub fn load_set(path: &Path) -> Result<Vec<Self>, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
        match value.get("keys").and_then(serde_json::Value::as_array) {
            Some(keys) if keys.is_empty() => Err(file_error(path, "the key set is empty")),
            Some(keys) => {
                keys.iter().map(|k| Self::from_jwk(&k.to_string()).map_err(|m| file_error(path, m))).collect()
            }
            None => Ok(vec![Self::from_jwk(&text).map_err(|m| file_error(path, m))?]),
        }
    }
}

fn file_error(path: &Path, e: impl ToString) -> KeyError {
    KeyError::File { path: path.display().to_string(), message: e.to_string() }
}

/// A signing key (private), kept out of any database.
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let kid = thumbprint(&B64.encode(key.verifying_key().as_bytes()));
        Ok(Self { kid, key })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn inner(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { kid: self.kid.clone(), key: self.key.verifying_key() }
    }

    /// The key as a private JWK (JSON); write it with owner-only permissions.
    pub fn to_jwk(&self) -> String {
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64.encode(self.key.verifying_key().as_bytes()),
            d: Some(B64.encode(self.key.to_bytes())),
            kid: Some(self.kid.clone()),
            alg: Some("EdDSA".into()),
            usage: Some("sig".into()),
        };
        serde_json::to_string_pretty(&jwk).unwrap_or_default()
    }

    pub fn from_jwk(text: &str) -> Result<Self, String> {
        let jwk: Jwk = serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
        let d = jwk.d.ok_or("this is a public key; signing needs the private key (with \"d\")")?;
        let seed: [u8; 32] =
            B64.decode(d).ok().and_then(|b| b.try_into().ok()).ok_or("d is not a 32-byte base64url value")?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if B64.encode(key.verifying_key().as_bytes()) != jwk.x {
            return Err("x does not match d".into());
        }
        Ok(Self { kid: jwk.kid.unwrap_or_else(|| thumbprint(&jwk.x)), key })
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        Self::from_jwk(&text).map_err(|m| file_error(path, m))
    }
}

/// The keys a node accepts bundles from.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    keys: Vec<PublicKey>,
}

impl TrustList {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
