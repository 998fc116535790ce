//! Bearer tokens, stored as SHA-256 hashes.

use serde::Serialize;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, get, now_ms};
use crate::domain::access::Role;

/// A token as stored: never the secret itself.
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    pub id: i64,
    pub name: String,
    /// The first characters of the secret, so that people can tell tokens apart.
    pub prefix: String,
    pub role: Role,
    pub gateway: Option<String>,
    pub environment: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a new token is for.
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: Role,
    /// Node tokens only: the environment they may fetch.
    pub scope: Option<(&'a str, &'a str)>,
    pub created_by: &'a str,
}

impl Token {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: get(row, "id")?,
            name: get(row, "name")?,
            prefix: get(row, "prefix")?,
            role: Role::parse(&get::<String>(row, "role")?).unwrap_or(Role::Viewer),
            gateway: get(row, "gateway")?,
            environment: get(row, "environment")?,
            created_by: get(row, "created_by")?,
            created_at: get(row, "created_at")?,
            revoked_at: get(row, "revoked_at")?,
        })
    }
}

impl Store {
    /// Stores a token by its hash; `tx` is the audited change it belongs to.
    pub async fn insert_token(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        new: &NewToken<'_>,
        hash: &str,
        prefix: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, prefix, role, gateway, environment, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(new.name)
        .bind(hash)
        .bind(prefix)
        .bind(new.role.as_str())
        .bind(new.scope.map(|s| s.0))
        .bind(new.scope.map(|s| s.1))
        .bind(new.created_by)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await?;
        get(&row, "id")
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        let sql = "SELECT id, name, prefix, role, gateway, environment, created_by, created_at, revoked_at \
                   FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL";
        let row = sqlx::query(sql).bind(hash).fetch_optional(self.pool()).await?;
        row.as_ref().map(Token::from_row).transpose()
    }

    /// Tokens, optionally only the node tokens of one environment.
    pub async fn tokens(&self, scope: Option<(&str, &str)>) -> Result<Vec<Token>> {
        let rows = match scope {
            Some((gateway, env)) => {
                sqlx::query(
                    "SELECT id, name, prefix, role, gateway, environment, created_by, created_at, revoked_at \
                     FROM api_tokens WHERE gateway = $1 AND environment = $2 ORDER BY id",
                )
                .bind(gateway)
                .bind(env)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, name, prefix, role, gateway, environment, created_by, created_at, revoked_at \
                     FROM api_tokens WHERE gateway IS NULL ORDER BY id",
                )
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(Token::from_row).collect()
    }

    pub async fn token(&self, id: i64) -> Result<Token> {
        let row = sqlx::query(
            "SELECT id, name, prefix, role, gateway, environment, created_by, created_at, revoked_at \
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        Token::from_row(&row)
    }

    /// Revokes a token; it stops working at once.
    pub async fn revoke_token(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: i64) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("live token {id}")));
        }
        Ok(())
    }

    /// Node tokens of every environment.
    pub async fn node_tokens(&self) -> Result<Vec<Token>> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, role, gateway, environment, created_by, created_at, revoked_at \
             FROM api_tokens WHERE gateway IS NOT NULL ORDER BY gateway, environment, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Token::from_row).collect()
    }
}
