//! The control plane's audited actions, shared by the API handlers, the CLI's direct
//! database commands and the dev suite's seeding. Each one checks its rules, changes
//! the store and appends to the audit chain in one transaction.

use std::path::Path;

use serde::Serialize;
use weir_gateway::bundle::{self, Metadata, Payload};
use weir_gateway::config::Format;

use crate::api::error::{ApiError, ApiResult};
use crate::domain::access::{Role, generate_token, hash_token};
use crate::domain::signing::SigningKeys;
use crate::domain::upload::{self, Problem};
use crate::store::gateways::Gateway;
use crate::store::tokens::NewToken;
use crate::store::versions::NewVersion;
use crate::store::{Change, Store};

/// Gateway and environment names appear in URLs, file names and bundle scopes.
pub fn check_name(kind: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{kind} name {name:?} must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

pub async fn create_gateway(store: &Store, actor: &str, name: &str, description: &str) -> ApiResult<Gateway> {
    check_name("gateway", name)?;
    let mut w = store.write().await?;
    store.create_gateway(&mut w.tx, name, description).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "gateway.create",
        target: name.to_owned(),
        detail: description.to_owned(),
        ..Change::default()
    })
    .await?;
    Ok(store.gateway(name).await?)
}

pub async fn create_environment(
    store: &Store,
    actor: &str,
    gateway: &str,
    name: &str,
    requires: Option<&str>,
) -> ApiResult<()> {
    check_name("environment", name)?;
    let gw = store.gateway(gateway).await?;
    if let Some(required) = requires {
        if required == name {
            return Err(ApiError::BadRequest("an environment cannot require itself".into()));
        }
        store.environment(gateway, required).await.map_err(|_| {
            ApiError::BadRequest(format!("requires {required:?}, which is not an environment of {gateway:?}"))
        })?;
    }
    let mut w = store.write().await?;
    store.create_environment(&mut w.tx, &gw, name, requires).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "environment.create",
        target: format!("{gateway}/{name}"),
        detail: requires.map(|r| format!("requires {r}")).unwrap_or_default(),
        ..Change::default()
    })
    .await?;
    Ok(())
}

/// The result of a config upload.
#[derive(Debug, Serialize)]
pub struct Pushed {
    pub version: i64,
    pub digest: String,
    /// True when the config equals the latest version, which is returned instead of a copy.
    pub unchanged: bool,
    pub endpoints: usize,
    pub warnings: Vec<Problem>,
}

/// Validates a config with the node's own code and stores it as the next version.
pub async fn push_version(
    store: &Store,
    actor: &str,
    gateway: &str,
    text: &str,
    format: Format,
    message: &str,
) -> ApiResult<Pushed> {
    let gw = store.gateway(gateway).await?;
    let accepted = upload::accept(text, format).map_err(ApiError::InvalidConfig)?;
    let latest = store.latest_version(gw.id).await?;
    if let Some(latest) = latest.as_ref().filter(|v| v.digest == accepted.digest) {
        // Pipelines push on every commit; an unchanged config is not a new version.
        return Ok(Pushed {
            version: latest.version,
            digest: accepted.digest,
            unchanged: true,
            endpoints: accepted.endpoints,
            warnings: accepted.warnings,
        });
    }
    let mut w = store.write().await?;
    let new = NewVersion {
        author: actor,
        message,
        format: upload::format_name(format),
        source: text,
        canonical: &accepted.canonical,
        digest: &accepted.digest,
    };
    let number = store.insert_version(&mut w.tx, gw.id, &new).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "version.create",
        target: format!("{gateway}/v{number}"),
        before: latest.map(|v| v.digest),
        after: Some(accepted.digest.clone()),
        detail: message.to_owned(),
    })
    .await?;
    Ok(Pushed {
        version: number,
        digest: accepted.digest,
        unchanged: false,
        endpoints: accepted.endpoints,
        warnings: accepted.warnings,
    })
}

/// The result of a promotion.
#[derive(Debug, Serialize)]
pub struct Promoted {
    pub serial: i64,
    pub version: i64,
    pub digest: String,
    pub kid: String,
    /// Whether this went back to an older version than the one it replaced.
    pub rollback: bool,
}

/// Points an environment at a version and signs its next bundle.
pub async fn promote(
    store: &Store,
    signing_key: &Path,
    actor: &str,
    gateway: &str,
    environment: &str,
    number: i64,
) -> ApiResult<Promoted> {
    let gw = store.gateway(gateway).await?;
    let env = store.environment(gateway, environment).await?;
    let version = store.version(gw.id, number).await?;
    if let Some(required) = env.requires.as_deref() {
        let before = store.environment(gateway, required).await?;
        if !store.was_promoted(before.id, number).await? {
            return Err(ApiError::PromotionRule(format!(
                "{environment} only takes versions promoted to {required} first, and version {number} never was"
            )));
        }
    }
    let keys = SigningKeys::load(signing_key).map_err(|e| ApiError::Internal(format!("signing key: {e}")))?;
    let key = keys.active();
    let previous = store.promotions(env.id).await?.into_iter().next();
    let config = version.config.unwrap_or_default();

    let mut w = store.write().await?;
    let serial = store.advance_environment(&mut w.tx, env.id, number).await?;
    let payload = Payload {
        metadata: Metadata {
            gateway: gateway.to_owned(),
            environment: environment.to_owned(),
            serial: u64::try_from(serial).unwrap_or_default(),
            config_version: u64::try_from(number).unwrap_or_default(),
            config_digest: version.digest.clone(),
            issued_at: bundle::now_rfc3339(),
        },
        config,
        // API keys arrive with the developer portal; until then the keyring is empty.
        keyring: Vec::new(),
    };
    let jws = bundle::sign(&payload, key).map_err(|e| ApiError::Internal(e.to_string()))?;
    let text = serde_json::to_string(&jws).map_err(|e| ApiError::Internal(e.to_string()))?;
    store
        .insert_promotion(
            &mut w.tx,
            &crate::store::promotions::NewPromotion {
                environment_id: env.id,
                serial,
                version: number,
                digest: &version.digest,
                kid: key.kid(),
                bundle: &text,
                promoted_by: actor,
            },
        )
        .await?;
    let rollback = previous.as_ref().is_some_and(|p| p.version > number);
    w.commit(Change {
        actor: actor.to_owned(),
        action: if rollback { "environment.rollback" } else { "environment.promote" },
        target: format!("{gateway}/{environment}"),
        before: previous.map(|p| p.digest),
        after: Some(version.digest.clone()),
        detail: format!("version {number}, serial {serial}"),
    })
    .await?;
    Ok(Promoted { serial, version: number, digest: version.digest, kid: key.kid().to_owned(), rollback })
}

/// A new token: its id and the secret, which is not stored and cannot be shown again.
#[derive(Debug, Serialize)]
pub struct Issued {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// Issues an operator, CI or node token. Node tokens are scoped to one environment.
pub async fn issue_token(
    store: &Store,
    actor: &str,
    name: &str,
    role: Role,
    scope: Option<(&str, &str)>,
) -> ApiResult<Issued> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(ApiError::BadRequest("a token needs a name of 1-100 characters".into()));
    }
    if (role == Role::Node) != scope.is_some() {
        return Err(ApiError::BadRequest("node tokens, and only they, belong to one environment".into()));
    }
    if let Some((gateway, environment)) = scope {
        store.environment(gateway, environment).await?;
    }
    let prefix = if role == Role::Node { "weirn_" } else { "weir_" };
    let token = generate_token(prefix).map_err(|e| ApiError::Internal(e.to_string()))?;
    let shown: String = token.chars().take(prefix.len() + 4).collect();
    let mut w = store.write().await?;
    let new = NewToken { name, role, scope, created_by: actor };
    let id = store.insert_token(&mut w.tx, &new, &hash_token(&token), &shown).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "token.create",
        target: match scope {
            Some((g, e)) => format!("{g}/{e}/token:{name}"),
            None => format!("token:{name}"),
        },
        detail: format!("id {id}, role {role}"),
        ..Change::default()
    })
    .await?;
    Ok(Issued { id, name: name.to_owned(), role, token })
}

pub async fn revoke_token(store: &Store, actor: &str, id: i64) -> ApiResult<()> {
    let token = store.token(id).await?;
    let mut w = store.write().await?;
    store.revoke_token(&mut w.tx, id).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "token.revoke",
        target: format!("token:{}", token.name),
        detail: format!("id {id}, role {}", token.role),
        ..Change::default()
    })
    .await?;
    Ok(())
}
