-- Control plane schema (PostgreSQL). migrations/sqlite holds the same schema for SQLite.
-- Times are Unix milliseconds (BIGINT) so that both databases store and compare them alike.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- Bearer tokens: operators and CI (role admin/operator/viewer) and nodes (role node,
-- scoped to one gateway environment). Only the SHA-256 of a token is stored.
CREATE TABLE api_tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    role        TEXT NOT NULL,
    gateway     TEXT,
    environment TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE gateways (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE environments (
    id             BIGSERIAL PRIMARY KEY,
    gateway_id     BIGINT NOT NULL REFERENCES gateways (id),
    name           TEXT NOT NULL,
    -- Promotion rule: a version must have been promoted to this environment first.
    requires       TEXT,
    active_version BIGINT,
    serial         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (gateway_id, name)
);

CREATE TABLE config_versions (
    gateway_id BIGINT NOT NULL REFERENCES gateways (id),
    number     BIGINT NOT NULL,
    parent     BIGINT,
    author     TEXT NOT NULL,
    message    TEXT NOT NULL,
    format     TEXT NOT NULL,
    source     TEXT NOT NULL,
    canonical  TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (gateway_id, number)
);

-- One row per promotion; `bundle` is the signed JWS the nodes fetch.
CREATE TABLE promotions (
    id             BIGSERIAL PRIMARY KEY,
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    serial         BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    digest         TEXT NOT NULL,
    kid            TEXT NOT NULL,
    bundle         TEXT NOT NULL,
    promoted_by    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (environment_id, serial)
);

CREATE TABLE nodes (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    node_id        TEXT NOT NULL,
    hostname       TEXT NOT NULL,
    build          TEXT NOT NULL,
    serial         BIGINT,
    config_digest  TEXT,
    last_fetch_at  TEXT,
    last_result    TEXT NOT NULL,
    reported_at    TEXT NOT NULL,
    seen_at        BIGINT NOT NULL,
    PRIMARY KEY (environment_id, node_id)
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash | seq | at | actor | action | target | before | after | detail).
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    before_digest TEXT,
    after_digest  TEXT,
    detail        TEXT NOT NULL,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);

-- The chain's head, one row. Every audited change updates it first, which serialises
-- writers on both databases (a row lock in PostgreSQL, the write lock in SQLite).
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, 'genesis');
