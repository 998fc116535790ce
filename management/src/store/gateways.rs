//! Gateways and their environments.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{Result, Store, StoreError, get, now_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Gateway {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub gateway_id: i64,
    pub gateway: String,
    pub name: String,
    /// Promotion rule: versions must have been promoted to this environment first.
    pub requires: Option<String>,
    /// The version the environment runs (none before its first promotion).
    pub active_version: Option<i64>,
    /// The serial of its current bundle; 0 before the first promotion.
    pub serial: i64,
    pub created_at: i64,
}

impl Gateway {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: get(row, "id")?,
            name: get(row, "name")?,
            description: get(row, "description")?,
            created_at: get(row, "created_at")?,
        })
    }
}

impl Environment {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: get(row, "id")?,
            gateway_id: get(row, "gateway_id")?,
            gateway: get(row, "gateway")?,
            name: get(row, "name")?,
            requires: get(row, "requires")?,
            active_version: get(row, "active_version")?,
            serial: get(row, "serial")?,
            created_at: get(row, "created_at")?,
        })
    }
}

fn conflict(e: sqlx::Error, what: String) -> StoreError {
    let e = StoreError::from(e);
    if e.is_unique_violation() { StoreError::Conflict(format!("{what} already exists")) } else { e }
}

impl Store {
    pub async fn create_gateway(
        &self,
        tx: &mut Transaction<'static, Any>,
        name: &str,
        description: &str,
    ) -> Result<i64> {
        let row = sqlx::query("INSERT INTO gateways (name, description, created_at) VALUES ($1, $2, $3) RETURNING id")
            .bind(name)
            .bind(description)
            .bind(now_ms())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| conflict(e, format!("gateway {name:?}")))?;
        get(&row, "id")
    }

    pub async fn gateways(&self) -> Result<Vec<Gateway>> {
        let rows = sqlx::query("SELECT id, name, description, created_at FROM gateways ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(Gateway::from_row).collect()
    }

    pub async fn gateway(&self, name: &str) -> Result<Gateway> {
        let row = sqlx::query("SELECT id, name, description, created_at FROM gateways WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("gateway {name:?}")))?;
        Gateway::from_row(&row)
    }

    pub async fn create_environment(
        &self,
        tx: &mut Transaction<'static, Any>,
        gateway: &Gateway,
        name: &str,
        requires: Option<&str>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO environments (gateway_id, name, requires, serial, created_at) VALUES ($1, $2, $3, 0, $4) \
             RETURNING id",
        )
        .bind(gateway.id)
        .bind(name)
        .bind(requires)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| conflict(e, format!("environment {:?} of gateway {:?}", name, gateway.name)))?;
        get(&row, "id")
    }

    pub async fn environments(&self, gateway: &Gateway) -> Result<Vec<Environment>> {
        let rows = sqlx::query(
            "SELECT e.id, e.gateway_id, g.name AS gateway, e.name, e.requires, e.active_version, e.serial, e.created_at \
             FROM environments e JOIN gateways g ON g.id = e.gateway_id WHERE e.gateway_id = $1 ORDER BY e.id",
        )
        .bind(gateway.id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Environment::from_row).collect()
    }

    pub async fn environment(&self, gateway: &str, name: &str) -> Result<Environment> {
        let row = sqlx::query(
            "SELECT e.id, e.gateway_id, g.name AS gateway, e.name, e.requires, e.active_version, e.serial, e.created_at \
             FROM environments e JOIN gateways g ON g.id = e.gateway_id WHERE g.name = $1 AND e.name = $2",
        )
        .bind(gateway)
        .bind(name)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("environment {name:?} of gateway {gateway:?}")))?;
        Environment::from_row(&row)
    }

    /// Every environment of every gateway, by gateway then creation.
    pub async fn all_environments(&self) -> Result<Vec<Environment>> {
        let rows = sqlx::query(
            "SELECT e.id, e.gateway_id, g.name AS gateway, e.name, e.requires, e.active_version, e.serial, e.created_at \
             FROM environments e JOIN gateways g ON g.id = e.gateway_id ORDER BY g.name, e.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Environment::from_row).collect()
    }
}
