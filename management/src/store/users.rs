//! Operator accounts: local (Argon2id password) or single sign-on (OpenID Connect).

use serde::Serialize;
use sqlx::{Any, Transaction};

use super::sessions::user_from_row;
use super::{Result, Store, StoreError, get, now_ms};
use crate::domain::access::Role;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: String,
    /// `issuer|subject` for single sign-on accounts.
    pub sso_subject: Option<String>,
    pub created_at: i64,
}

impl Store {
    /// Creates a local account in an audited write; `password_hash` is an Argon2id PHC string.
    pub async fn create_user_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        email: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO users (email, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(email)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| {
            let e = StoreError::from(e);
            if e.is_unique_violation() {
                StoreError::Conflict(format!("an account for {email} already exists"))
            } else {
                e
            }
        })?;
        get(&row, "id")
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row =
            sqlx::query("SELECT id, email, role, password_hash, sso_subject, created_at FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(self.pool())
                .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, id: i64) -> Result<User> {
        let row =
            sqlx::query("SELECT id, email, role, password_hash, sso_subject, created_at FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
        user_from_row(&row)
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows =
            sqlx::query("SELECT id, email, role, password_hash, sso_subject, created_at FROM users ORDER BY email")
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn set_role(&self, tx: &mut Transaction<'static, Any>, id: i64, role: Role) -> Result<()> {
        sqlx::query("UPDATE users SET role = $1 WHERE id = $2").bind(role.as_str()).bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    /// Finds the single sign-on account for `subject`, or creates it; its role follows
    /// the provider's groups at every sign-in. Returns the account and whether it is new.
    pub async fn upsert_sso_user(
        &self,
        tx: &mut Transaction<'static, Any>,
        subject: &str,
        email: &str,
        role: Role,
    ) -> Result<(i64, bool)> {
        let existing =
            sqlx::query("SELECT id FROM users WHERE sso_subject = $1").bind(subject).fetch_optional(&mut **tx).await?;
        if let Some(row) = existing {
            let id: i64 = get(&row, "id")?;
            sqlx::query("UPDATE users SET role = $1, email = $2 WHERE id = $3")
                .bind(role.as_str())
                .bind(email)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            return Ok((id, false));
        }
        let row = sqlx::query(
            "INSERT INTO users (email, password_hash, role, sso_subject, created_at) VALUES ($1, '', $2, $3, $4) RETURNING id",
        )
        .bind(email)
        .bind(role.as_str())
        .bind(subject)
        .bind(now_ms())
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| {
            let e = StoreError::from(e);
            if e.is_unique_violation() {
                StoreError::Conflict(format!("a local account already uses {email}; sign in with its password"))
            } else {
                e
            }
        })?;
        Ok((get(&row, "id")?, true))
    }
}
