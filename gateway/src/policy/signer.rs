//! `auth/signer`: turns objects a backend returns (e.g. a login service's
//! `access_token` claims) into JWTs signed with a private key from a JWK set, so the
//! gateway that validates tokens can also issue them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use super::{Problems, problem};

/// Settings read from the namespace, without I/O.
pub struct SignerSettings {
    alg: Algorithm,
    kid: String,
    keys_to_sign: Vec<String>,
    full: bool,
    jwk_local_path: std::path::PathBuf,
}

impl SignerSettings {
    pub fn parse(v: &Value, path: &str) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let mut p = Problems::new();
        let s = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let alg = match s("alg") {
            Some(a) => a.parse().unwrap_or_else(|_| {
                p.push(problem(
                    &format!("{path}.alg"),
                    format!("{a:?} is not a JWT algorithm (ES512 is not supported)"),
                ));
                Algorithm::HS256
            }),
            None => {
                p.push(problem(&format!("{path}.alg"), "is required"));
                Algorithm::HS256
            }
        };
        let kid = s("kid").unwrap_or_else(|| {
            p.push(problem(&format!("{path}.kid"), "is required: the id of the signing key in the JWK set"));
            ""
        });
        let keys_to_sign: Vec<String> = obj
            .get("keys_to_sign")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if keys_to_sign.is_empty() {
            p.push(problem(&format!("{path}.keys_to_sign"), "is required: the response keys to sign"));
        }
        let jwk_local_path = match (s("jwk_local_path"), s("jwk_url")) {
            (Some(l), _) => l.into(),
            (None, Some(_)) => {
                p.push(problem(&format!("{path}.jwk_url"), "signing keys are read from jwk_local_path only (a private key set should not travel over the network)"));
                Default::default()
            }
            (None, None) => {
                p.push(problem(&format!("{path}.jwk_local_path"), "is required: the JWK set holding the private key"));
                Default::default()
            }
        };
        let full = obj.get("full").and_then(Value::as_bool).unwrap_or(false);
        if p.is_empty() { Ok(Self { alg, kid: kid.to_owned(), keys_to_sign, full, jwk_local_path }) } else { Err(p) }
    }
}

/// A compiled `auth/signer`.
pub struct Signer {
    header: Header,
    key: EncodingKey,
    keys_to_sign: Vec<String>,
    full: bool,
}

fn field(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("the key has no {name:?}"))?;
    B64.decode(text).map_err(|e| format!("{name}: {e}"))
}

/// PKCS#8 prefixes: the fixed ASN.1 around the raw key bytes for each curve.
const ED25519_PKCS8: &[u8] =
    &[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
const P256_PKCS8: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
    0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
];
const P256_PUBLIC: &[u8] = &[0xa1, 0x44, 0x03, 0x42, 0x00, 0x04];
const P384_PKCS8: &[u8] = &[
    0x30, 0x81, 0xb6, 0x02, 0x01, 0x00, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
    0x2b, 0x81, 0x04, 0x00, 0x22, 0x04, 0x81, 0x9e, 0x30, 0x81, 0x9b, 0x02, 0x01, 0x01, 0x04, 0x30,
];
const P384_PUBLIC: &[u8] = &[0xa1, 0x64, 0x03, 0x62, 0x00, 0x04];

/// A private JWK as jsonwebtoken's encoding key.
fn encoding_key(jwk: &Value, alg: Algorithm) -> Result<EncodingKey, String> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    match (kty, alg) {
        ("oct", Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            Ok(EncodingKey::from_secret(&field(jwk, "k")?))
        }
        ("OKP", Algorithm::EdDSA) => {
            let d = field(jwk, "d")?;
            Ok(EncodingKey::from_ed_der(&[ED25519_PKCS8, &d].concat()))
        }
        ("EC", Algorithm::ES256 | Algorithm::ES384) => {
            let (prefix, public, size) =
                if alg == Algorithm::ES256 { (P256_PKCS8, P256_PUBLIC, 32) } else { (P384_PKCS8, P384_PUBLIC, 48) };
            let (d, x, y) = (field(jwk, "d")?, field(jwk, "x")?, field(jwk, "y")?);
            if d.len() != size || x.len() != size || y.len() != size {
                return Err(format!("the EC key does not belong to the curve of {alg:?}"));
            }
            Ok(EncodingKey::from_ec_der(&[prefix, &d, public, &x, &y].concat()))
        }
        (
            "RSA",
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            let big = |n: &str| field(jwk, n).map(|b| rsa::BigUint::from_bytes_be(&b));
            let key = rsa::RsaPrivateKey::from_components(big("n")?, big("e")?, big("d")?, vec![big("p")?, big("q")?])
                .map_err(|e| e.to_string())?;
            let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
            Ok(EncodingKey::from_rsa_der(der.as_bytes()))
        }
        _ => Err(format!("a {kty:?} key cannot sign {alg:?}")),
    }
}

impl Signer {
    /// Reads the JWK set and picks the signing key.
    pub fn build(settings: SignerSettings) -> Result<Self, String> {
        let path = &settings.jwk_local_path;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let set: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let jwk = set
            .get("keys")
            .and_then(Value::as_array)
            .and_then(|keys| keys.iter().find(|k| k.get("kid").and_then(Value::as_str) == Some(&settings.kid)))
            .ok_or_else(|| format!("{}: no key with kid {:?}", path.display(), settings.kid))?;
        let key = encoding_key(jwk, settings.alg).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut header = Header::new(settings.alg);
        header.kid = Some(settings.kid);
        Ok(Self { header, key, keys_to_sign: settings.keys_to_sign, full: settings.full })
    }

    /// Replaces each configured key holding an object with its signed token.
    pub fn apply(&self, data: &mut Map<String, Value>) {
        for name in &self.keys_to_sign {
            let Some(claims @ Value::Object(_)) = data.get(name) else { continue };
            match jsonwebtoken::encode(&self.header, claims, &self.key) {
                Ok(token) => {
                    let value = if self.full { full_form(&token) } else { Value::String(token) };
                    data.insert(name.clone(), value);
                }
                Err(e) => {
                    tracing::error!(key = %name, error = %e, "cannot sign");
                    data.remove(name);
                }
            }
        }
    }
}

/// The JWS JSON serialisation of a compact token.
fn full_form(token: &str) -> Value {
    let mut parts = token.splitn(3, '.');
    let (p, l, s) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    serde_json::json!({"protected": p, "payload": l, "signature": s})
}
