//! Operator accounts (the web UI signs them in; tokens serve the API and CI).

use serde::Serialize;

use super::{Result, Store, get, now_ms};
use crate::domain::access::Role;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: i64,
}

impl Store {
    /// Creates an account; `password_hash` is an Argon2id PHC string.
    pub async fn create_user(&self, email: &str, password_hash: &str, role: Role) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO users (email, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(email)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_one(self.pool())
        .await?;
        get(&row, "id")
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, email, role, password_hash, created_at FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        row.map(|row| {
            Ok(User {
                id: get(&row, "id")?,
                email: get(&row, "email")?,
                role: Role::parse(&get::<String>(&row, "role")?).unwrap_or(Role::Viewer),
                password_hash: get(&row, "password_hash")?,
                created_at: get(&row, "created_at")?,
            })
        })
        .transpose()
    }
}
