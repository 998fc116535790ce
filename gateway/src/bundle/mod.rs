//! Signed bundles: what a managed node runs.
//!
//! A bundle is one config version plus the environment's keyring and metadata,
//! serialised once to bytes and signed as a JWS in the flattened JSON serialisation
//! (RFC 7515) with EdDSA over Ed25519 (RFC 8037). Verification works on the exact
//! bytes that were signed; nothing is re-serialised before the signature is checked.

mod keys;

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub use keys::{KeyError, PublicKey, SigningKey, TrustList};

use crate::config::{self, Format, Service};

/// The `typ` of a bundle's protected header.
pub const MEDIA_TYPE: &str = "weir-bundle+json";

/// What a bundle says about itself, besides the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub gateway: String,
    pub environment: String,
    /// Monotonic per gateway and environment; a node never goes back to a lower one.
    pub serial: u64,
    /// The control plane's config version number (0 when signed by hand).
    #[serde(default)]
    pub config_version: u64,
    /// `sha256:<hex>` of the config bytes.
    pub config_digest: String,
    /// RFC 3339 time of signing.
    pub issued_at: String,
}

/// One API key of the environment's keyring, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringEntry {
    /// `sha256:<hex>` of the key.
    pub hash: String,
    pub consumer: String,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// RFC 3339; absent for keys that do not expire.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Revoked keys stay listed for a while so that nodes can say "revoked", not "unknown".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// What a plan allows each of its keys; absent limits do not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_per_day: Option<u64>,
    /// Requests per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_per_month: Option<u64>,
}

/// The signed payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    #[serde(flatten)]
    pub metadata: Metadata,
    /// The config, as the exact JSON text the digest covers.
    pub config: String,
    #[serde(default)]
    pub keyring: Vec<KeyringEntry>,
    /// The plans the keyring's entries name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub plans: std::collections::BTreeMap<String, PlanLimits>,
}

/// A JWS in the flattened JSON serialisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jws {
    pub protected: String,
    pub payload: String,
    pub signature: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Why a bundle was refused. The messages are what a node reports to operators.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("not a JWS bundle: {0}")]
    Malformed(String),
    #[error("unsupported algorithm {0:?} (bundles are signed with EdDSA)")]
    Algorithm(String),
    #[error("signed with key {0:?}, which is not in the trust list")]
    UnknownKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("bundle is for {found}, this node serves {expected}")]
    WrongScope { expected: String, found: String },
    #[error("serial {found} is lower than the running serial {running} (replayed or stale bundle)")]
    Replayed { running: u64, found: u64 },
    #[error("config digest {found} does not match the config ({actual})")]
    Digest { found: String, actual: String },
    #[error("config is invalid: {0}")]
    InvalidConfig(String),
}

/// A bundle whose signature, scope, serial and config were all checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub kid: String,
    pub payload: Payload,
    pub service: Service,
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in Sha256::digest(bytes) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The canonical text of a config: compact JSON with sorted keys, whatever format the
/// file was written in, so that the same config always has the same digest.
pub fn canonical_config(text: &str, format: Format) -> Result<String, String> {
    let value = config::to_value(text, format)?;
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

/// Signs a payload. The payload is serialised here, once; those bytes are what the
/// signature and every later verification cover.
pub fn sign(payload: &Payload, key: &SigningKey) -> Result<Jws, serde_json::Error> {
    let header = Header { alg: "EdDSA".into(), kid: key.kid().to_owned(), typ: Some(MEDIA_TYPE.into()) };
    let protected = B64.encode(serde_json::to_vec(&header)?);
    let payload = B64.encode(serde_json::to_vec(payload)?);
    let signature = key.inner().sign(format!("{protected}.{payload}").as_bytes());
    Ok(Jws { protected, payload, signature: B64.encode(signature.to_bytes()) })
}

/// What a node expects of a bundle beyond its signature.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    pub gateway: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// The serial of the bundle running now; lower ones are refused.
    pub running_serial: Option<u64>,
}

/// Parses bundle bytes (a JWS in JSON serialisation) without verifying them.
pub fn parse(bytes: &[u8]) -> Result<Jws, Rejection> {
    serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed(e.to_string()))
}

/// Verifies a bundle: signature by a trusted key, then scope, serial, digest and config.
pub fn verify(jws: &Jws, trust: &TrustList, expect: &Expect<'_>) -> Result<Verified, Rejection> {
    let header_bytes =
        B64.decode(&jws.protected).map_err(|e| Rejection::Malformed(format!("protected header: {e}")))?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| Rejection::Malformed(format!("protected header: {e}")))?;
    if header.alg != "EdDSA" {
        return Err(Rejection::Algorithm(header.alg));
    }
    let key = trust.get(&header.kid).ok_or_else(|| Rejection::UnknownKey(header.kid.clone()))?;
    let signature = B64.decode(&jws.signature).map_err(|e| Rejection::Malformed(format!("signature: {e}")))?;
    let signature = Signature::from_slice(&signature).map_err(|_| Rejection::BadSignature)?;
    key.inner()
        .verify(format!("{}.{}", jws.protected, jws.payload).as_bytes(), &signature)
        .map_err(|_| Rejection::BadSignature)?;

    // Only now, with the signature checked, is the payload read.
    let payload_bytes = B64.decode(&jws.payload).map_err(|e| Rejection::Malformed(format!("payload: {e}")))?;
    let payload: Payload =
        serde_json::from_slice(&payload_bytes).map_err(|e| Rejection::Malformed(format!("payload: {e}")))?;
    let m = &payload.metadata;
    if let (Some(g), Some(e)) = (expect.gateway, expect.environment)
        && (g != m.gateway || e != m.environment)
    {
        return Err(Rejection::WrongScope {
            expected: format!("{g}/{e}"),
            found: format!("{}/{}", m.gateway, m.environment),
        });
    }
    if let Some(g) = expect.gateway.filter(|g| *g != m.gateway) {
        return Err(Rejection::WrongScope { expected: g.to_owned(), found: m.gateway.clone() });
    }
    if let Some(e) = expect.environment.filter(|e| *e != m.environment) {
        return Err(Rejection::WrongScope { expected: e.to_owned(), found: m.environment.clone() });
    }
    if let Some(running) = expect.running_serial
        && m.serial < running
    {
        return Err(Rejection::Replayed { running, found: m.serial });
    }
    let actual = digest(payload.config.as_bytes());
    if actual != m.config_digest {
        return Err(Rejection::Digest { found: m.config_digest.clone(), actual });
    }
    let checked = config::parse(&payload.config, Format::Json, |_| None);
    let service = match checked.service {
        Some(s) if checked.report.is_runnable(false, false) => s,
        _ => {
            let mut problems: Vec<String> = checked.report.errors.iter().map(ToString::to_string).collect();
            problems.extend(checked.report.unsupported.iter().filter(|u| u.blocking).map(ToString::to_string));
            return Err(Rejection::InvalidConfig(problems.join("; ")));
        }
    };
    Ok(Verified { kid: header.kid, payload, service })
}

/// The current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    crate::time::rfc3339(std::time::SystemTime::now())
}

/// Reads metadata without verifying anything (for `weir bundle inspect`).
pub fn inspect(jws: &Jws) -> Result<(Value, Metadata), Rejection> {
    let header: Value = B64
        .decode(&jws.protected)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Rejection::Malformed("protected header".into()))?;
    let payload: Payload = B64
        .decode(&jws.payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Rejection::Malformed("payload".into()))?;
    Ok((header, payload.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"version":3,"host":["http://127.0.0.1:1"],"endpoints":[{"endpoint":"/a","backend":[{"url_pattern":"/"}]}]}"#;

    fn payload(serial: u64, config: &str) -> Payload {
        Payload {
            metadata: Metadata {
                gateway: "g".into(),
                environment: "prod".into(),
                serial,
                config_version: 1,
                config_digest: digest(config.as_bytes()),
                issued_at: now_rfc3339(),
            },
            config: config.into(),
            keyring: Vec::new(),
            plans: Default::default(),
        }
    }

    fn expect(serial: Option<u64>) -> Expect<'static> {
        Expect { gateway: Some("g"), environment: Some("prod"), running_serial: serial }
    }

    fn setup() -> (SigningKey, TrustList) {
        let key = SigningKey::generate().unwrap();
        let trust = TrustList::new(vec![key.public()]);
        (key, trust)
    }

    #[test]
    fn round_trip() {
        let (key, trust) = setup();
        let jws = sign(&payload(3, CONFIG), &key).unwrap();
        let bytes = serde_json::to_vec(&jws).unwrap();
        let v = verify(&parse(&bytes).unwrap(), &trust, &expect(Some(3))).unwrap();
        assert_eq!(v.payload.metadata.serial, 3);
        assert_eq!(v.kid, key.kid());
        assert_eq!(v.service.endpoints.len(), 1);
    }

    #[test]
    fn every_tampering_is_refused() {
        let (key, trust) = setup();
        let jws = sign(&payload(3, CONFIG), &key).unwrap();

        let mut p: Payload = serde_json::from_slice(&B64.decode(&jws.payload).unwrap()).unwrap();
        p.metadata.serial = 99;
        let tampered = Jws { payload: B64.encode(serde_json::to_vec(&p).unwrap()), ..jws.clone() };
        assert_eq!(verify(&tampered, &trust, &expect(None)).unwrap_err(), Rejection::BadSignature);

        let header = B64.encode(br#"{"alg":"EdDSA","kid":"other","typ":"weir-bundle+json"}"#);
        let tampered = Jws { protected: header, ..jws.clone() };
        assert!(matches!(verify(&tampered, &trust, &expect(None)), Err(Rejection::UnknownKey(_))));

        let none = B64.encode(br#"{"alg":"none","kid":"x"}"#);
        assert!(matches!(
            verify(&Jws { protected: none, ..jws.clone() }, &trust, &expect(None)),
            Err(Rejection::Algorithm(_))
        ));

        let other = SigningKey::generate().unwrap();
        let forged = sign(&payload(3, CONFIG), &other).unwrap();
        assert!(matches!(verify(&forged, &trust, &expect(None)), Err(Rejection::UnknownKey(_))));
        let same_kid = Jws { signature: forged.signature.clone(), ..jws.clone() };
        assert_eq!(verify(&same_kid, &trust, &expect(None)).unwrap_err(), Rejection::BadSignature);
    }

    #[test]
    fn scope_serial_digest_and_config_are_checked() {
        let (key, trust) = setup();
        let jws = sign(&payload(3, CONFIG), &key).unwrap();
        let wrong = Expect { gateway: Some("g"), environment: Some("dev"), running_serial: None };
        assert!(matches!(verify(&jws, &trust, &wrong), Err(Rejection::WrongScope { .. })));
        assert_eq!(verify(&jws, &trust, &expect(Some(4))).unwrap_err(), Rejection::Replayed { running: 4, found: 3 });

        let mut p = payload(5, CONFIG);
        p.config = CONFIG.replace("/a", "/b");
        assert!(matches!(verify(&sign(&p, &key).unwrap(), &trust, &expect(None)), Err(Rejection::Digest { .. })));

        let bad = r#"{"version":2}"#;
        let err = verify(&sign(&payload(5, bad), &key).unwrap(), &trust, &expect(None)).unwrap_err();
        assert!(matches!(&err, Rejection::InvalidConfig(m) if m.contains("version: must be 3")), "{err}");
    }
}
