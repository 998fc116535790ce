-- API-key usage (SQLite): requests per consumer (app) from the nodes' exports.

CREATE TABLE consumer_minutes (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    minute         BIGINT NOT NULL,
    consumer       TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    requests       BIGINT NOT NULL,
    PRIMARY KEY (environment_id, minute, consumer, node_id)
);

-- The last cumulative count per node and consumer, to turn exports into deltas.
CREATE TABLE consumer_series (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    node_id        TEXT NOT NULL,
    consumer       TEXT NOT NULL,
    start_ns       TEXT NOT NULL,
    requests       BIGINT NOT NULL,
    PRIMARY KEY (environment_id, node_id, consumer)
);
