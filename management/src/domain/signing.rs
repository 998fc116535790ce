//! The bundle signing keys: a file of private JWKs kept outside the database.
//!
//! The file holds a JWK Set; the last key signs, the earlier ones are kept so that
//! `weir-control keys rotate` can publish the full public set while nodes move over.
//! A file with a single JWK (from `weir keygen`) is accepted too.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weir_gateway::bundle::{PublicKey, SigningKey};

pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

impl SigningKeys {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let keys = match value.get("keys").and_then(Value::as_array) {
            Some(keys) => keys
                .iter()
                .map(|k| SigningKey::from_jwk(&k.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?,
            None => vec![SigningKey::from_jwk(&text).map_err(|e| format!("{}: {e}", path.display()))?],
        };
        if keys.is_empty() {
            return Err(format!("{}: the key set is empty", path.display()));
        }
        Ok(Self { keys })
    }

    /// The key that signs new bundles.
    pub fn active(&self) -> &SigningKey {
        // `load` and `generate` never leave the set empty.
        &self.keys[self.keys.len() - 1]
    }

    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(SigningKey::public).collect()
    }

    /// The public JWK Set nodes trust (`weir run --trust <file>`).
    pub fn public_jwks(&self) -> String {
        let keys: Vec<Value> =
            self.keys.iter().filter_map(|k| serde_json::from_str(&k.public().to_jwk()).ok()).collect();
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
    }

    fn private_jwks(&self) -> String {
        let keys: Vec<Value> = self.keys.iter().filter_map(|k| serde_json::from_str(&k.to_jwk()).ok()).collect();
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
    }

    /// Creates a key file with one new key (and its public set beside it).
    pub fn generate(path: &Path) -> Result<Self, String> {
        let keys = Self { keys: vec![SigningKey::generate().map_err(|e| e.to_string())?] };
        keys.save(path)?;
        Ok(keys)
    }

    /// Adds a new signing key; the old ones stay in the set. Returns the new key id.
    pub fn rotate(path: &Path) -> Result<(Self, String), String> {
        let mut keys = Self::load(path)?;
        let key = SigningKey::generate().map_err(|e| e.to_string())?;
        let kid = key.kid().to_owned();
        keys.keys.push(key);
        keys.save(path)?;
        Ok((keys, kid))
    }

    /// Writes the private set (owner-only, atomically) and the public set beside it.
    fn save(&self, path: &Path) -> Result<(), String> {
        let fail = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        let tmp = path.with_extension("tmp");
        write_private(&tmp, self.private_jwks().as_bytes()).map_err(|e| fail(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(path, e))?;
        let public = public_path(path);
        std::fs::write(&public, self.public_jwks()).map_err(|e| fail(&public, e))
    }
}

/// Where the public set of a key file is written: `signing.key` -> `signing.pub`.
pub fn public_path(path: &Path) -> PathBuf {
    path.with_extension("pub")
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_and_signs_with_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let first = SigningKeys::generate(&path).unwrap();
        let old_kid = first.active().kid().to_owned();
        let (rotated, new_kid) = SigningKeys::rotate(&path).unwrap();
        assert_ne!(old_kid, new_kid);
        assert_eq!(rotated.active().kid(), new_kid);
        let reloaded = SigningKeys::load(&path).unwrap();
        assert_eq!(reloaded.active().kid(), new_kid);
        let public = std::fs::read_to_string(public_path(&path)).unwrap();
        assert!(public.contains(&old_kid) && public.contains(&new_kid));
        assert!(!public.contains("\"d\""), "the public set holds no private key");
    }
}
