//! Web UI sessions and pending single sign-ons.

use sqlx::any::AnyRow;

use super::users::User;
use super::{Result, Store, get, now_ms};
use crate::domain::access::Role;

/// A live session with its account.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    /// The form token every state-changing request of this session must carry.
    pub csrf: String,
    pub expires_at: i64,
}

/// A single sign-on waiting for the provider's callback.
#[derive(Debug, Clone)]
pub struct PendingSso {
    pub verifier: String,
    pub nonce: String,
    pub created_at: i64,
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: get(row, "id")?,
        email: get(row, "email")?,
        role: Role::parse(&get::<String>(row, "role")?).unwrap_or(Role::Viewer),
        password_hash: get(row, "password_hash")?,
        sso_subject: get(row, "sso_subject")?,
        created_at: get(row, "created_at")?,
    })
}

impl Store {
    pub async fn create_session(&self, id_hash: &str, user_id: i64, csrf: &str, expires_at: i64) -> Result<()> {
        // Expired sessions go whenever a new one starts: no timer needed.
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1").bind(now_ms()).execute(self.pool()).await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now_ms())
        .bind(expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The unexpired session with this id hash.
    pub async fn session(&self, id_hash: &str) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.role, u.password_hash, u.sso_subject, u.created_at, s.csrf, s.expires_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(Session { user: user_from_row(&row)?, csrf: get(&row, "csrf")?, expires_at: get(&row, "expires_at")? })
        })
        .transpose()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash).execute(self.pool()).await?;
        Ok(())
    }

    /// Signs an account out everywhere. Returns how many sessions ended.
    pub async fn delete_sessions_of(&self, user_id: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(self.pool()).await?;
        Ok(done.rows_affected())
    }

    pub async fn begin_sso(&self, state_hash: &str, verifier: &str, nonce: &str) -> Result<()> {
        // Sign-ins abandoned at the provider are dropped after ten minutes.
        sqlx::query("DELETE FROM sso_logins WHERE created_at < $1")
            .bind(now_ms() - 600_000)
            .execute(self.pool())
            .await?;
        sqlx::query("INSERT INTO sso_logins (state_hash, verifier, nonce, created_at) VALUES ($1, $2, $3, $4)")
            .bind(state_hash)
            .bind(verifier)
            .bind(nonce)
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Takes a pending sign-on (single use: a replayed callback finds nothing).
    pub async fn take_sso(&self, state_hash: &str) -> Result<Option<PendingSso>> {
        let row = sqlx::query("DELETE FROM sso_logins WHERE state_hash = $1 RETURNING verifier, nonce, created_at")
            .bind(state_hash)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(PendingSso {
                verifier: get(&r, "verifier")?,
                nonce: get(&r, "nonce")?,
                created_at: get(&r, "created_at")?,
            })
        })
        .transpose()
    }
}
