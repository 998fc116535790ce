-- Operator web UI: sign-in sessions, SSO accounts and pending SSO sign-ins (PostgreSQL).

-- A signed-in browser. The cookie holds a random id; only its SHA-256 is stored.
CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- `issuer|subject` for accounts that sign in with OpenID Connect; their role follows
-- the identity provider's groups at every sign-in.
ALTER TABLE users ADD COLUMN sso_subject TEXT;
CREATE UNIQUE INDEX users_by_sso_subject ON users (sso_subject);

-- An OpenID Connect sign-in between the redirect to the provider and its callback.
CREATE TABLE sso_logins (
    state_hash TEXT PRIMARY KEY,
    verifier   TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
