//! The developer portal's data: products and plans, developers and their sessions,
//! apps, subscriptions, API keys, and the keyrings waiting to be published.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{Result, Store, StoreError, get, now_ms};

/// Revoked and expired keys stay in keyrings this long, so that nodes answer "revoked"
/// or "expired" instead of "unknown" while clients still use them.
const KEEP_DEAD_KEYS_MS: i64 = 30 * 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Plan {
    #[serde(default)]
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub rate_per_second: Option<i64>,
    #[serde(default)]
    pub rate_per_minute: Option<i64>,
    #[serde(default)]
    pub quota_per_day: Option<i64>,
    #[serde(default)]
    pub quota_per_month: Option<i64>,
    #[serde(default)]
    pub key_ttl_days: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub title: String,
    pub description: String,
    pub gateway: String,
    pub environment: String,
    #[serde(skip)]
    pub environment_id: i64,
    pub approval: String,
    #[serde(skip)]
    pub openapi: Option<String>,
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Developer {
    pub id: i64,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    pub status: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub id: i64,
    pub app_id: i64,
    pub app: String,
    pub developer: String,
    pub product: String,
    pub plan: String,
    pub status: String,
    pub environment_id: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: i64,
    pub subscription_id: i64,
    pub app: String,
    pub product: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    #[serde(skip)]
    pub environment_id: i64,
}

/// A product about to be stored.
pub struct NewProduct<'a> {
    pub name: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub approval: &'a str,
    pub plans: &'a [Plan],
}

/// One key as a keyring carries it.
#[derive(Debug, Clone)]
pub struct KeyringRow {
    pub key_hash: String,
    pub app_id: i64,
    pub app: String,
    pub product: String,
    pub plan: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn plan_from_row(row: &AnyRow) -> Result<Plan> {
    Ok(Plan {
        id: get(row, "id")?,
        name: get(row, "name")?,
        rate_per_second: get(row, "rate_per_second")?,
        rate_per_minute: get(row, "rate_per_minute")?,
        quota_per_day: get(row, "quota_per_day")?,
        quota_per_month: get(row, "quota_per_month")?,
        key_ttl_days: get(row, "key_ttl_days")?,
    })
}

fn unique(e: sqlx::Error, what: String) -> StoreError {
    let e = StoreError::from(e);
    if e.is_unique_violation() { StoreError::Conflict(format!("{what} already exists")) } else { e }
}

impl Store {
    pub async fn create_product(
        &self,
        tx: &mut Transaction<'static, Any>,
        environment_id: i64,
        p: &NewProduct<'_>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO products (environment_id, name, title, description, approval, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(environment_id)
        .bind(p.name)
        .bind(p.title)
        .bind(p.description)
        .bind(p.approval)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| unique(e, format!("product {:?}", p.name)))?;
        let id: i64 = get(&row, "id")?;
        for plan in p.plans {
            sqlx::query(
                "INSERT INTO plans (product_id, name, rate_per_second, rate_per_minute, quota_per_day, quota_per_month, \
                 key_ttl_days) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(&plan.name)
            .bind(plan.rate_per_second)
            .bind(plan.rate_per_minute)
            .bind(plan.quota_per_day)
            .bind(plan.quota_per_month)
            .bind(plan.key_ttl_days)
            .execute(&mut **tx)
            .await
            .map_err(|e| unique(e, format!("plan {:?}", plan.name)))?;
        }
        Ok(id)
    }

    pub async fn set_product_openapi(&self, tx: &mut Transaction<'static, Any>, id: i64, spec: &str) -> Result<()> {
        sqlx::query("UPDATE products SET openapi = $1 WHERE id = $2").bind(spec).bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Every product with its plans, by name.
    pub async fn products(&self) -> Result<Vec<Product>> {
        let rows = sqlx::query(
            "SELECT p.id, p.name, p.title, p.description, p.approval, p.openapi, p.environment_id, \
             e.name AS environment, g.name AS gateway FROM products p JOIN environments e ON e.id = p.environment_id \
             JOIN gateways g ON g.id = e.gateway_id ORDER BY p.name",
        )
        .fetch_all(self.pool())
        .await?;
        let plans = sqlx::query(
            "SELECT id, product_id, name, rate_per_second, rate_per_minute, quota_per_day, \
                                 quota_per_month, key_ttl_days FROM plans ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        let mut products = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = get(row, "id")?;
            let mut own = Vec::new();
            for p in &plans {
                if get::<i64>(p, "product_id")? == id {
                    own.push(plan_from_row(p)?);
                }
            }
            products.push(Product {
                id,
                name: get(row, "name")?,
                title: get(row, "title")?,
                description: get(row, "description")?,
                gateway: get(row, "gateway")?,
                environment: get(row, "environment")?,
                environment_id: get(row, "environment_id")?,
                approval: get(row, "approval")?,
                openapi: get(row, "openapi")?,
                plans: own,
            });
        }
        Ok(products)
    }

    pub async fn product(&self, name: &str) -> Result<Product> {
        self.products()
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| StoreError::NotFound(format!("product {name:?}")))
    }

    // Developers and their sessions.

    pub async fn create_developer(
        &self,
        tx: &mut Transaction<'static, Any>,
        email: &str,
        hash: &str,
        status: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO developers (email, password_hash, status, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(email)
        .bind(hash)
        .bind(status)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| unique(e, "an account with this email".into()))?;
        get(&row, "id")
    }

    fn developer_from_row(row: &AnyRow) -> Result<Developer> {
        Ok(Developer {
            id: get(row, "id")?,
            email: get(row, "email")?,
            password_hash: get(row, "password_hash")?,
            status: get(row, "status")?,
            created_at: get(row, "created_at")?,
        })
    }

    pub async fn developer_by_email(&self, email: &str) -> Result<Option<Developer>> {
        let row = sqlx::query("SELECT id, email, password_hash, status, created_at FROM developers WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(Self::developer_from_row).transpose()
    }

    pub async fn developers(&self) -> Result<Vec<Developer>> {
        let rows = sqlx::query("SELECT id, email, password_hash, status, created_at FROM developers ORDER BY email")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(Self::developer_from_row).collect()
    }

    pub async fn set_developer_status(&self, tx: &mut Transaction<'static, Any>, id: i64, status: &str) -> Result<()> {
        let done = sqlx::query("UPDATE developers SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("developer {id}")));
        }
        Ok(())
    }

    pub async fn create_developer_session(
        &self,
        id_hash: &str,
        developer_id: i64,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("DELETE FROM developer_sessions WHERE expires_at < $1").bind(now_ms()).execute(self.pool()).await?;
        sqlx::query(
            "INSERT INTO developer_sessions (id_hash, developer_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(developer_id)
        .bind(csrf)
        .bind(now_ms())
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The developer and CSRF token of a live session.
    pub async fn developer_session(&self, id_hash: &str) -> Result<Option<(Developer, String)>> {
        let row = sqlx::query(
            "SELECT d.id, d.email, d.password_hash, d.status, d.created_at, s.csrf FROM developer_sessions s \
             JOIN developers d ON d.id = s.developer_id WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((Self::developer_from_row(&r)?, get(&r, "csrf")?))).transpose()
    }

    pub async fn delete_developer_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM developer_sessions WHERE id_hash = $1").bind(id_hash).execute(self.pool()).await?;
        Ok(())
    }

    // Apps, subscriptions and keys, always scoped to their developer.

    pub async fn create_app(
        &self,
        tx: &mut Transaction<'static, Any>,
        developer_id: i64,
        name: &str,
        description: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO apps (developer_id, name, description, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(developer_id)
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| unique(e, format!("an app named {name:?}")))?;
        get(&row, "id")
    }

    pub async fn apps(&self, developer_id: i64) -> Result<Vec<App>> {
        let rows =
            sqlx::query("SELECT id, name, description, created_at FROM apps WHERE developer_id = $1 ORDER BY name")
                .bind(developer_id)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| {
                Ok(App {
                    id: get(r, "id")?,
                    name: get(r, "name")?,
                    description: get(r, "description")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    /// One of this developer's apps (not found for anyone else's).
    pub async fn app(&self, developer_id: i64, app_id: i64) -> Result<App> {
        self.apps(developer_id)
            .await?
            .into_iter()
            .find(|a| a.id == app_id)
            .ok_or_else(|| StoreError::NotFound(format!("app {app_id}")))
    }

    pub async fn create_subscription(
        &self,
        tx: &mut Transaction<'static, Any>,
        app_id: i64,
        product_id: i64,
        plan_id: i64,
        status: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO subscriptions (app_id, product_id, plan_id, status, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(app_id)
        .bind(product_id)
        .bind(plan_id)
        .bind(status)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| unique(e, "a subscription of this app to this product".into()))?;
        get(&row, "id")
    }

    fn subscription_from_row(r: &AnyRow) -> Result<Subscription> {
        Ok(Subscription {
            id: get(r, "id")?,
            app_id: get(r, "app_id")?,
            app: get(r, "app")?,
            developer: get(r, "developer")?,
            product: get(r, "product")?,
            plan: get(r, "plan")?,
            status: get(r, "status")?,
            environment_id: get(r, "environment_id")?,
            created_at: get(r, "created_at")?,
        })
    }

    /// Subscriptions of one developer (`Some`) or of everyone (`None`, for operators).
    pub async fn subscriptions(&self, developer_id: Option<i64>) -> Result<Vec<Subscription>> {
        let rows = sqlx::query(
            "SELECT s.id, s.app_id, a.name AS app, d.email AS developer, p.name AS product, pl.name AS plan, s.status, \
             p.environment_id, s.created_at FROM subscriptions s JOIN apps a ON a.id = s.app_id \
             JOIN developers d ON d.id = a.developer_id JOIN products p ON p.id = s.product_id \
             JOIN plans pl ON pl.id = s.plan_id WHERE ($1 = 0 OR a.developer_id = $1) ORDER BY s.id",
        )
        .bind(developer_id.unwrap_or(0))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Self::subscription_from_row).collect()
    }

    pub async fn set_subscription_status(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: i64,
        status: &str,
    ) -> Result<()> {
        let done = sqlx::query("UPDATE subscriptions SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("subscription {id}")));
        }
        Ok(())
    }

    pub async fn insert_api_key(
        &self,
        tx: &mut Transaction<'static, Any>,
        subscription_id: i64,
        key_hash: &str,
        prefix: &str,
        expires_at: Option<i64>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO api_keys (subscription_id, key_hash, prefix, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(subscription_id)
        .bind(key_hash)
        .bind(prefix)
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&mut **tx)
        .await?;
        get(&row, "id")
    }

    /// Keys of one developer's apps.
    pub async fn api_keys(&self, developer_id: i64) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT k.id, k.subscription_id, a.name AS app, p.name AS product, k.prefix, k.created_at, k.expires_at, \
             k.revoked_at, p.environment_id FROM api_keys k JOIN subscriptions s ON s.id = k.subscription_id \
             JOIN apps a ON a.id = s.app_id JOIN products p ON p.id = s.product_id WHERE a.developer_id = $1 \
             ORDER BY k.id",
        )
        .bind(developer_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKey {
                    id: get(r, "id")?,
                    subscription_id: get(r, "subscription_id")?,
                    app: get(r, "app")?,
                    product: get(r, "product")?,
                    prefix: get(r, "prefix")?,
                    created_at: get(r, "created_at")?,
                    expires_at: get(r, "expires_at")?,
                    revoked_at: get(r, "revoked_at")?,
                    environment_id: get(r, "environment_id")?,
                })
            })
            .collect()
    }

    pub async fn revoke_api_key(&self, tx: &mut Transaction<'static, Any>, id: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Makes a key expire at `at` (rotation's grace period), unless it expires sooner.
    pub async fn expire_api_key(&self, tx: &mut Transaction<'static, Any>, id: i64, at: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND (expires_at IS NULL OR expires_at > $1)")
            .bind(at)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    // Keyrings.

    /// Asks the control plane to publish an environment's keyring again.
    pub async fn request_keyring(&self, tx: &mut Transaction<'static, Any>, environment_id: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO keyring_changes (environment_id, requested_at) VALUES ($1, $2) \
             ON CONFLICT (environment_id) DO UPDATE SET requested_at = excluded.requested_at",
        )
        .bind(environment_id)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Takes the pending keyring requests.
    pub async fn take_keyring_requests(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("DELETE FROM keyring_changes RETURNING environment_id").fetch_all(self.pool()).await?;
        rows.iter().map(|r| get(r, "environment_id")).collect()
    }

    /// The keys an environment's keyring carries: those of active subscriptions, plus
    /// revoked and expired ones for a while.
    pub async fn keyring_rows(&self, environment_id: i64) -> Result<Vec<KeyringRow>> {
        let keep_since = now_ms() - KEEP_DEAD_KEYS_MS;
        let rows = sqlx::query(
            "SELECT k.key_hash, a.id AS app_id, a.name AS app, p.name AS product, pl.name AS plan, k.expires_at, \
             k.revoked_at FROM api_keys k JOIN subscriptions s ON s.id = k.subscription_id \
             JOIN apps a ON a.id = s.app_id JOIN products p ON p.id = s.product_id JOIN plans pl ON pl.id = s.plan_id \
             WHERE p.environment_id = $1 AND s.status = 'active' AND (k.revoked_at IS NULL OR k.revoked_at > $2) \
             AND (k.expires_at IS NULL OR k.expires_at > $2) ORDER BY k.id",
        )
        .bind(environment_id)
        .bind(keep_since)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyringRow {
                    key_hash: get(r, "key_hash")?,
                    app_id: get(r, "app_id")?,
                    app: get(r, "app")?,
                    product: get(r, "product")?,
                    plan: get(r, "plan")?,
                    expires_at: get(r, "expires_at")?,
                    revoked_at: get(r, "revoked_at")?,
                })
            })
            .collect()
    }

    pub async fn environment_by_id(&self, id: i64) -> Result<super::gateways::Environment> {
        let row = sqlx::query(
            "SELECT e.id, e.gateway_id, g.name AS gateway, e.name, e.requires, e.active_version, e.serial, e.created_at \
             FROM environments e JOIN gateways g ON g.id = e.gateway_id WHERE e.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("environment {id}")))?;
        super::gateways::Environment::from_row(&row)
    }
}
