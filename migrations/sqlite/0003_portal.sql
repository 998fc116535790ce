-- Developer portal (SQLite): products and plans that operators publish, developers,
-- their apps, subscriptions and API keys, and the keyrings waiting to be published.

-- An API product: endpoints of one gateway environment protected by `auth/api-keys`
-- with the product's name among their roles (keys get that role).
CREATE TABLE products (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    name           TEXT NOT NULL UNIQUE,
    title          TEXT NOT NULL,
    description    TEXT NOT NULL,
    -- auto: subscriptions are active at once; manual: an operator approves them.
    approval       TEXT NOT NULL,
    -- An uploaded OpenAPI document, merged over the one generated from the config.
    openapi        TEXT,
    created_at     BIGINT NOT NULL
);

CREATE TABLE plans (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id      BIGINT NOT NULL REFERENCES products (id),
    name            TEXT NOT NULL,
    rate_per_second BIGINT,
    rate_per_minute BIGINT,
    quota_per_day   BIGINT,
    quota_per_month BIGINT,
    -- Keys issued under the plan expire after this many days (none when null).
    key_ttl_days    BIGINT,
    UNIQUE (product_id, name)
);

CREATE TABLE developers (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    -- active, or pending until an operator approves the account.
    status        TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE developer_sessions (
    id_hash      TEXT PRIMARY KEY,
    developer_id BIGINT NOT NULL REFERENCES developers (id) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE apps (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    developer_id BIGINT NOT NULL REFERENCES developers (id),
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (developer_id, name)
);

CREATE TABLE subscriptions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id     BIGINT NOT NULL REFERENCES apps (id),
    product_id BIGINT NOT NULL REFERENCES products (id),
    plan_id    BIGINT NOT NULL REFERENCES plans (id),
    -- active, pending (manual approval) or rejected.
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (app_id, product_id)
);

-- Keys are stored only as SHA-256 hashes; the prefix helps people tell them apart.
CREATE TABLE api_keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id),
    key_hash        TEXT NOT NULL UNIQUE,
    prefix          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    revoked_at      BIGINT
);

-- Environments whose keyring changed: the control plane signs and publishes them.
CREATE TABLE keyring_changes (
    environment_id BIGINT PRIMARY KEY REFERENCES environments (id),
    requested_at   BIGINT NOT NULL
);
