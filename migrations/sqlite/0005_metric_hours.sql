-- Request metrics (SQLite): hourly rollups for the long ranges. Minutes older than a
-- day are folded into their hour, so that a week's chart reads hours, not minutes.

CREATE TABLE metric_hours (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    -- Unix hour: milliseconds / 3600000.
    hour           BIGINT NOT NULL,
    node_id        TEXT NOT NULL,
    route          TEXT NOT NULL,
    method         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    serial         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
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
    PRIMARY KEY (environment_id, hour, node_id, route, method, status_class, serial)
);
