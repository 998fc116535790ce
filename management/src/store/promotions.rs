//! Promotions: which version an environment runs, and the signed bundle for each.

use serde::Serialize;
use sqlx::{Any, Transaction};

use super::{Result, Store, get, now_ms};

/// One promotion of an environment (rollbacks are promotions too).
#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    pub serial: i64,
    pub version: i64,
    pub digest: String,
    /// Key id of the signing key.
    pub kid: String,
    pub promoted_by: String,
    pub created_at: i64,
}

/// A signed bundle ready to be stored.
pub struct NewPromotion<'a> {
    pub environment_id: i64,
    pub serial: i64,
    pub version: i64,
    pub digest: &'a str,
    pub kid: &'a str,
    pub bundle: &'a str,
    pub promoted_by: &'a str,
}

impl Store {
    /// Points an environment at a version and returns its next serial. Part of an
    /// audited write, so serials never repeat and never go back.
    pub async fn advance_environment(
        &self,
        tx: &mut Transaction<'static, Any>,
        environment_id: i64,
        version: i64,
    ) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE environments SET serial = serial + 1, active_version = $1 WHERE id = $2 RETURNING serial",
        )
        .bind(version)
        .bind(environment_id)
        .fetch_one(&mut **tx)
        .await?;
        get(&row, "serial")
    }

    pub async fn insert_promotion(&self, tx: &mut Transaction<'static, Any>, p: &NewPromotion<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO promotions (environment_id, serial, version, digest, kid, bundle, promoted_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(p.environment_id)
        .bind(p.serial)
        .bind(p.version)
        .bind(p.digest)
        .bind(p.kid)
        .bind(p.bundle)
        .bind(p.promoted_by)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Whether a version was ever promoted to an environment.
    pub async fn was_promoted(&self, environment_id: i64, version: i64) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM promotions WHERE environment_id = $1 AND version = $2")
            .bind(environment_id)
            .bind(version)
            .fetch_one(self.pool())
            .await?;
        Ok(get::<i64>(&row, "n")? > 0)
    }

    /// An environment's promotions, newest first.
    pub async fn promotions(&self, environment_id: i64) -> Result<Vec<Promotion>> {
        let rows = sqlx::query(
            "SELECT serial, version, digest, kid, promoted_by, created_at FROM promotions \
             WHERE environment_id = $1 ORDER BY serial DESC",
        )
        .bind(environment_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Promotion {
                    serial: get(row, "serial")?,
                    version: get(row, "version")?,
                    digest: get(row, "digest")?,
                    kid: get(row, "kid")?,
                    promoted_by: get(row, "promoted_by")?,
                    created_at: get(row, "created_at")?,
                })
            })
            .collect()
    }

    /// The signed bundle of an environment's latest promotion: `(serial, JWS text)`.
    pub async fn current_bundle(&self, environment_id: i64) -> Result<Option<(i64, String)>> {
        let row =
            sqlx::query("SELECT serial, bundle FROM promotions WHERE environment_id = $1 ORDER BY serial DESC LIMIT 1")
                .bind(environment_id)
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| Ok((get(&r, "serial")?, get(&r, "bundle")?))).transpose()
    }

    /// When each environment was last promoted: `(environment id, Unix ms)`.
    pub async fn last_promotions(&self) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT environment_id, MAX(created_at) AS at FROM promotions GROUP BY environment_id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((get(r, "environment_id")?, get(r, "at")?))).collect()
    }
}
