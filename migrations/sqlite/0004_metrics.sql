-- Request metrics (SQLite): nodes' OTLP exports folded into per-minute rollups.

CREATE TABLE metric_minutes (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    -- Unix minute: milliseconds / 60000.
    minute         BIGINT NOT NULL,
    node_id        TEXT NOT NULL,
    route          TEXT NOT NULL,
    method         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    serial         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
    -- Request-duration buckets (the gateway's bounds: 5 ms ... 10 s, then slower).
    b0            BIGINT NOT NULL,
    b1            BIGINT NOT NULL,
    b2            BIGINT NOT NULL,
    b3            BIGINT NOT NULL,
    b4            BIGINT NOT NULL,
    b5            BIGINT NOT NULL,
    b6            BIGINT NOT NULL,
    b7            BIGINT NOT NULL,
    b8            BIGINT NOT NULL,
    b9            BIGINT NOT NULL,
    b10           BIGINT NOT NULL,
    b11           BIGINT NOT NULL,
    PRIMARY KEY (environment_id, minute, node_id, route, method, status_class, serial)
);

-- The last cumulative point of each series, to turn cumulative exports into deltas and
-- to notice counter resets (a node restart or a new config).
CREATE TABLE metric_series (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    node_id        TEXT NOT NULL,
    route          TEXT NOT NULL,
    method         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    start_ns       TEXT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
    -- The bucket counts, comma-separated.
    buckets        TEXT NOT NULL,
    PRIMARY KEY (environment_id, node_id, route, method, status_class)
);
