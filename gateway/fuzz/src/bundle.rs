//! Signed bundles: what `weir bundle verify` / `inspect` and a managed node do with the
//! bytes they are handed, against a trust list of one fixed key.
//!
//! Input: the first byte picks a mode, the rest is its data.
//! * `s`: the data is a config (or a whole payload); the harness signs it with the
//!   trusted key, so the checks behind the signature (scope, serial, digest, config)
//!   are reached. A bundle signed by the trusted key for this node, with the config's
//!   digest, verifies exactly when the config is runnable; any one-byte change of the
//!   signed bytes (picked by the second byte) is refused.
//! * `k`: the data is a JWK; a private key read from it signs bundles its public half
//!   verifies.
//! * anything else: the data is bundle bytes from outside, verified and inspected; only
//!   the harness's key is trusted, so nothing is accepted.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use weir_gateway::bundle::{self, Expect, Metadata, Payload, PublicKey, SigningKey, TrustList};
use weir_gateway::config::{self, Format};

/// The trusted key: fixed, so that runs and seed corpora are reproducible.
fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let seed = [7u8; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        let jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","d":"{}"}}"#,
            B64.encode(public.as_bytes()),
            B64.encode(seed)
        );
        SigningKey::from_jwk(&jwk).expect("the fixed key is a valid JWK")
    })
}

fn trust() -> &'static TrustList {
    static TRUST: OnceLock<TrustList> = OnceLock::new();
    TRUST.get_or_init(|| TrustList::new(vec![key().public()]))
}

const EXPECT: Expect<'static> = Expect { gateway: Some("g"), environment: Some("prod"), running_serial: Some(3) };

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    match data.split_first() {
        Some((b's', rest)) => signed(rest),
        Some((b'k', rest)) => jwk(rest),
        _ => foreign(data),
    }
}

fn foreign(bytes: &[u8]) {
    let Ok(jws) = bundle::parse(bytes) else { return };
    let _ = bundle::inspect(&jws);
    for expect in [EXPECT, Expect::default()] {
        if let Ok(v) = bundle::verify(&jws, trust(), &expect) {
            panic!("a bundle the harness did not sign verified: kid {}", v.kid);
        }
    }
}

fn signed(data: &[u8]) {
    let Some((&tamper_at, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let payload = serde_json::from_str::<Payload>(text).unwrap_or_else(|_| Payload {
        metadata: Metadata {
            gateway: "g".into(),
            environment: "prod".into(),
            serial: 3,
            config_version: 1,
            config_digest: bundle::digest(text.as_bytes()),
            issued_at: "2026-01-01T00:00:00Z".into(),
        },
        config: text.to_owned(),
        keyring: Vec::new(),
        plans: Default::default(),
    });
    let jws = bundle::sign(&payload, key()).expect("a payload serialises");
    let bytes = serde_json::to_vec(&jws).expect("a JWS serialises");
    let parsed = bundle::parse(&bytes).expect("a signed bundle parses");
    let verdict = bundle::verify(&parsed, trust(), &EXPECT);

    let (_, metadata) = bundle::inspect(&parsed).expect("a signed bundle can be inspected");
    assert_eq!(metadata, payload.metadata);
    let m = &payload.metadata;
    let in_scope = m.gateway == "g" && m.environment == "prod" && m.serial >= 3;
    if in_scope && m.config_digest == bundle::digest(payload.config.as_bytes()) {
        let checked = config::parse(&payload.config, Format::Json, |_| None);
        let runnable = checked.service.is_some() && checked.report.is_runnable(false, false);
        assert_eq!(verdict.is_ok(), runnable, "verify disagrees with the config check: {:?}", verdict.err());
    } else {
        assert!(verdict.is_err(), "a bundle out of scope or with a wrong digest verified");
    }

    let mut tampered = bytes;
    let at = usize::from(tamper_at) * tampered.len() / 256;
    tampered[at] ^= 0x20;
    if let Ok(jws) = bundle::parse(&tampered) {
        assert!(bundle::verify(&jws, trust(), &EXPECT).is_err(), "a tampered bundle verified (byte {at})");
    }
}

fn jwk(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = PublicKey::from_jwk(text);
    let Ok(private) = SigningKey::from_jwk(text) else { return };
    let public = PublicKey::from_jwk(&private.public().to_jwk()).expect("a key's own public JWK reads back");
    assert_eq!(public.kid(), private.kid());
    let payload = Payload {
        metadata: Metadata {
            gateway: "g".into(),
            environment: "prod".into(),
            serial: 3,
            config_version: 1,
            config_digest: bundle::digest(b"{}"),
            issued_at: "2026-01-01T00:00:00Z".into(),
        },
        config: "{}".into(),
        keyring: Vec::new(),
        plans: Default::default(),
    };
    let jws = bundle::sign(&payload, &private).expect("a payload serialises");
    let trust = TrustList::new(vec![public]);
    // `{}` is not a runnable config: the signature passes and the config is what fails.
    let verdict = bundle::verify(&jws, &trust, &EXPECT);
    assert!(matches!(verdict, Err(bundle::Rejection::InvalidConfig(_))), "{verdict:?}");
}
