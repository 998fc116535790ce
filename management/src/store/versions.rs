//! Config versions: immutable, numbered per gateway.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{Result, Store, StoreError, get, now_ms};

/// A stored version. `config` (the canonical JSON) and `source` (the upload as sent)
/// are read only when asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: i64,
    pub parent: Option<i64>,
    pub author: String,
    pub message: String,
    /// The format it was uploaded in: json, yaml or toml.
    pub format: String,
    pub digest: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A version about to be stored.
pub struct NewVersion<'a> {
    pub author: &'a str,
    pub message: &'a str,
    pub format: &'a str,
    pub source: &'a str,
    pub canonical: &'a str,
    pub digest: &'a str,
}

impl Version {
    fn from_row(row: &AnyRow, with_config: bool) -> Result<Self> {
        Ok(Self {
            version: get(row, "number")?,
            parent: get(row, "parent")?,
            author: get(row, "author")?,
            message: get(row, "message")?,
            format: get(row, "format")?,
            digest: get(row, "digest")?,
            created_at: get(row, "created_at")?,
            config: if with_config { Some(get(row, "canonical")?) } else { None },
            source: if with_config { Some(get(row, "source")?) } else { None },
        })
    }
}

impl Store {
    /// Stores the next version of a gateway; its parent is the latest one. Runs inside
    /// an audited write, which serialises the numbering.
    pub async fn insert_version(
        &self,
        tx: &mut Transaction<'static, Any>,
        gateway_id: i64,
        new: &NewVersion<'_>,
    ) -> Result<i64> {
        let latest = sqlx::query("SELECT MAX(number) AS latest FROM config_versions WHERE gateway_id = $1")
            .bind(gateway_id)
            .fetch_one(&mut **tx)
            .await?;
        let parent: Option<i64> = get(&latest, "latest")?;
        let number = parent.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO config_versions (gateway_id, number, parent, author, message, format, source, canonical, digest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(gateway_id)
        .bind(number)
        .bind(parent)
        .bind(new.author)
        .bind(new.message)
        .bind(new.format)
        .bind(new.source)
        .bind(new.canonical)
        .bind(new.digest)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(number)
    }

    /// All versions of a gateway, newest first, without their configs.
    pub async fn versions(&self, gateway_id: i64) -> Result<Vec<Version>> {
        self.versions_page(gateway_id, i64::MAX, 0).await
    }

    /// A page of a gateway's versions, newest first, without their configs.
    pub async fn versions_page(&self, gateway_id: i64, limit: i64, offset: i64) -> Result<Vec<Version>> {
        let rows = sqlx::query(
            "SELECT number, parent, author, message, format, digest, created_at FROM config_versions \
             WHERE gateway_id = $1 ORDER BY number DESC LIMIT $2 OFFSET $3",
        )
        .bind(gateway_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Version::from_row(r, false)).collect()
    }

    /// One version with its config.
    pub async fn version(&self, gateway_id: i64, number: i64) -> Result<Version> {
        let row = sqlx::query(
            "SELECT number, parent, author, message, format, digest, created_at, canonical, source FROM config_versions \
             WHERE gateway_id = $1 AND number = $2",
        )
        .bind(gateway_id)
        .bind(number)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("version {number}")))?;
        Version::from_row(&row, true)
    }

    /// The newest version, if any.
    pub async fn latest_version(&self, gateway_id: i64) -> Result<Option<Version>> {
        let row = sqlx::query(
            "SELECT number, parent, author, message, format, digest, created_at FROM config_versions \
             WHERE gateway_id = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(gateway_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(|r| Version::from_row(r, false)).transpose()
    }
}
