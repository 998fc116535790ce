//! The control plane's audited actions, shared by the API handlers, the CLI's direct
//! database commands and the dev suite's seeding. Each one checks its rules, changes
//! the store and appends to the audit chain in one transaction.

use std::path::Path;

use serde::Serialize;
use std::collections::BTreeMap;

use weir_gateway::bundle::{self, KeyringEntry, Metadata, Payload, PlanLimits};
use weir_gateway::config::Format;

use crate::api::error::{ApiError, ApiResult};
use crate::domain::access::{Role, generate_token, hash_token};
use crate::domain::signing::SigningKeys;
use crate::domain::upload::{self, Problem};
use crate::store::gateways::{Environment, Gateway};
use crate::store::tokens::NewToken;
use crate::store::versions::{NewVersion, Version};
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
    let previous = store.promotions(env.id).await?.into_iter().next();
    let rollback = previous.as_ref().is_some_and(|p| p.version > number);
    let signed = sign_bundle(
        store,
        signing_key,
        &env,
        &version,
        actor,
        if rollback { "environment.rollback" } else { "environment.promote" },
        previous.map(|p| p.digest),
    )
    .await?;
    Ok(Promoted { serial: signed.0, version: number, digest: version.digest, kid: signed.1, rollback })
}

/// The keyring and plans an environment's bundles carry.
pub async fn keyring(
    store: &Store,
    environment_id: i64,
) -> ApiResult<(Vec<KeyringEntry>, BTreeMap<String, PlanLimits>)> {
    let to_u32 = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok());
    let to_u64 = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
    let mut plans = BTreeMap::new();
    for product in store.products().await?.into_iter().filter(|p| p.environment_id == environment_id) {
        for plan in product.plans {
            plans.insert(
                format!("{}/{}", product.name, plan.name),
                PlanLimits {
                    rate_per_second: to_u32(plan.rate_per_second),
                    rate_per_minute: to_u32(plan.rate_per_minute),
                    quota_per_day: to_u64(plan.quota_per_day),
                    quota_per_month: to_u64(plan.quota_per_month),
                },
            );
        }
    }
    let entries = store
        .keyring_rows(environment_id)
        .await?
        .into_iter()
        .map(|k| KeyringEntry {
            hash: format!("sha256:{}", k.key_hash),
            consumer: format!("{}#{}", k.app, k.app_id),
            plan: Some(format!("{}/{}", k.product, k.plan)),
            roles: vec![k.product],
            expires_at: k.expires_at.map(crate::store::rfc3339),
            revoked: k.revoked_at.is_some(),
        })
        .collect();
    Ok((entries, plans))
}

/// Signs the environment's next bundle (its config version and current keyring) and
/// stores it with the audit entry. Returns the serial and the signing key id.
async fn sign_bundle(
    store: &Store,
    signing_key: &Path,
    env: &Environment,
    version: &Version,
    actor: &str,
    action: &'static str,
    before: Option<String>,
) -> ApiResult<(i64, String)> {
    let keys = SigningKeys::load(signing_key).map_err(|e| {
        tracing::error!(error = %e, "cannot sign: the signing key cannot be read");
        ApiError::Unavailable(format!(
            "cannot sign a bundle: the signing key cannot be read ({e}); nothing was promoted. \
             Restore the key file or create one with `weir-control keys init`"
        ))
    })?;
    let key = keys.active();
    let (keyring, plans) = keyring(store, env.id).await?;
    let key_count = keyring.len();
    let mut w = store.write().await?;
    let serial = store.advance_environment(&mut w.tx, env.id, version.version).await?;
    let payload = Payload {
        metadata: Metadata {
            gateway: env.gateway.clone(),
            environment: env.name.clone(),
            serial: u64::try_from(serial).unwrap_or_default(),
            config_version: u64::try_from(version.version).unwrap_or_default(),
            config_digest: version.digest.clone(),
            issued_at: bundle::now_rfc3339(),
        },
        config: version.config.clone().unwrap_or_default(),
        keyring,
        plans,
    };
    let jws = bundle::sign(&payload, key).map_err(|e| ApiError::Internal(e.to_string()))?;
    let text = serde_json::to_string(&jws).map_err(|e| ApiError::Internal(e.to_string()))?;
    store
        .insert_promotion(
            &mut w.tx,
            &crate::store::promotions::NewPromotion {
                environment_id: env.id,
                serial,
                version: version.version,
                digest: &version.digest,
                kid: key.kid(),
                bundle: &text,
                promoted_by: actor,
            },
        )
        .await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action,
        target: format!("{}/{}", env.gateway, env.name),
        before,
        after: Some(version.digest.clone()),
        detail: format!("version {}, serial {serial}, {key_count} key(s)", version.version),
    })
    .await?;
    store.bundle_signed(env.id, serial, &text);
    Ok((serial, key.kid().to_owned()))
}

/// Signs a new bundle for an environment whose keys changed (same config, serial + 1).
/// Returns the serial, or `None` when nothing runs there yet: its first promotion will
/// carry the keyring.
pub async fn publish_keyring(store: &Store, signing_key: &Path, environment_id: i64) -> ApiResult<Option<i64>> {
    let env = store.environment_by_id(environment_id).await?;
    let Some(active) = env.active_version else {
        return Ok(None);
    };
    let version = store.version(env.gateway_id, active).await?;
    let digest = Some(version.digest.clone());
    let (serial, _) = sign_bundle(store, signing_key, &env, &version, "keyring", "environment.keyring", digest).await?;
    Ok(Some(serial))
}

/// How often pending keyrings are looked for: a new or revoked key reaches long-polling
/// nodes within about this much plus one round trip.
const KEYRING_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Publishes the keyrings the portal asks for, forever (the control plane runs this;
/// the portal never signs).
pub async fn publish_keyrings(store: Store, signing_key: std::path::PathBuf) {
    loop {
        tokio::time::sleep(KEYRING_POLL).await;
        let pending = match store.take_keyring_requests().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read keyring requests");
                continue;
            }
        };
        for environment_id in pending {
            match publish_keyring(&store, &signing_key, environment_id).await {
                Ok(Some(serial)) => tracing::info!(environment_id, serial, "keyring published"),
                Ok(None) => {}
                Err(e) => tracing::error!(environment_id, error = %e, "keyring not published"),
            }
        }
    }
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

/// A product as operators publish it.
#[derive(Debug, serde::Deserialize)]
pub struct NewProduct {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub gateway: String,
    pub environment: String,
    /// `auto` (default) or `manual`.
    #[serde(default)]
    pub approval: Option<String>,
    pub plans: Vec<crate::store::portal::Plan>,
}

/// Publishes an API product with its plans. Its name is the role its keys get, so the
/// gateway config opens endpoints to it with `"auth/api-keys": {"roles": ["<name>"]}`.
pub async fn create_product(store: &Store, actor: &str, p: &NewProduct) -> ApiResult<()> {
    check_name("product", &p.name)?;
    let approval = p.approval.as_deref().unwrap_or("auto");
    if approval != "auto" && approval != "manual" {
        return Err(ApiError::BadRequest("approval is auto or manual".into()));
    }
    if p.plans.is_empty() {
        return Err(ApiError::BadRequest("a product needs at least one plan".into()));
    }
    for plan in &p.plans {
        check_name("plan", &plan.name)?;
        let limits =
            [plan.rate_per_second, plan.rate_per_minute, plan.quota_per_day, plan.quota_per_month, plan.key_ttl_days];
        if limits.iter().flatten().any(|n| *n <= 0 || *n > i64::from(u32::MAX)) {
            return Err(ApiError::BadRequest(format!("plan {:?}: limits are positive whole numbers", plan.name)));
        }
    }
    let env = store.environment(&p.gateway, &p.environment).await?;
    let mut w = store.write().await?;
    let new = crate::store::portal::NewProduct {
        name: &p.name,
        title: &p.title,
        description: &p.description,
        approval,
        plans: &p.plans,
    };
    store.create_product(&mut w.tx, env.id, &new).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "product.create",
        target: format!("product:{}", p.name),
        detail: format!("{}/{}, {} plan(s), {approval} approval", p.gateway, p.environment, p.plans.len()),
        ..Change::default()
    })
    .await?;
    Ok(())
}

/// Approves or rejects a subscription; the keyring follows (a rejected subscription's
/// keys leave it).
pub async fn decide_subscription(store: &Store, actor: &str, id: i64, approve: bool) -> ApiResult<()> {
    let sub = store
        .subscriptions(None)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("subscription {id} not found")))?;
    let status = if approve { "active" } else { "rejected" };
    let mut w = store.write().await?;
    store.set_subscription_status(&mut w.tx, id, status).await?;
    store.request_keyring(&mut w.tx, sub.environment_id).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: if approve { "subscription.approve" } else { "subscription.reject" },
        target: format!("app:{}#{} -> {}", sub.app, sub.app_id, sub.product),
        detail: format!("{} -> {status}", sub.status),
        ..Change::default()
    })
    .await?;
    Ok(())
}

/// Lets a developer who signed up while approval is required sign in.
pub async fn approve_developer(store: &Store, actor: &str, id: i64) -> ApiResult<()> {
    let mut w = store.write().await?;
    store.set_developer_status(&mut w.tx, id, "active").await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "developer.approve",
        target: format!("developer:{id}"),
        ..Change::default()
    })
    .await?;
    Ok(())
}

/// Stores the OpenAPI document operators wrote for a product (merged into its docs).
pub async fn set_product_openapi(store: &Store, actor: &str, product: &str, spec: &str) -> ApiResult<()> {
    let p = store.product(product).await?;
    let mut w = store.write().await?;
    store.set_product_openapi(&mut w.tx, p.id, spec).await?;
    w.commit(Change {
        actor: actor.to_owned(),
        action: "product.openapi",
        target: format!("product:{product}"),
        after: Some(weir_gateway::bundle::digest(spec.as_bytes())),
        ..Change::default()
    })
    .await?;
    Ok(())
}

/// Minute rollups are kept this long: the longest range drawn from them is a day.
const MINUTES_KEPT: i64 = 24 * 60;

/// How often the rollups ingest summed in memory are written.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes ingested metric rollups every second; drops minute rollups older than a day
/// and hour rollups older than `retention` every hour; forever.
pub async fn maintain_metrics(store: Store, retention: std::time::Duration) {
    let keep_hours = i64::try_from(retention.as_secs() / 3600).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if let Err(e) = store.flush_rollups().await {
            tracing::warn!(error = %e, "cannot write metric rollups; keeping them for the next try");
        }
        if pruned.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3600)) {
            continue;
        }
        pruned = Some(std::time::Instant::now());
        let now_minute = crate::store::now_ms() / 60_000;
        match store.prune_rollups(now_minute - MINUTES_KEPT, now_minute / 60 - keep_hours).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "old metric rollups dropped"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot drop old metric rollups"),
        }
    }
}
