-- Request metrics (SQLite), aggregated at ingest. Rows per node and route per minute
-- grew with nodes x routes (about 65 GB a day for 1,000 nodes of 20 routes); the
-- dashboard only ever reads totals, routes summed over nodes, and nodes summed over
-- routes. Ingest now adds each export to those three, at two widths: minutes (kept a
-- day, for the short ranges) and hours (kept 90 days, for the long ones), so no chart
-- reads more rows than it draws.
--
-- width: 1 (a minute) or 60 (an hour); start_minute: the Unix minute the row starts.

-- The whole environment.
CREATE TABLE metric_totals (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    width          BIGINT NOT NULL,
    start_minute   BIGINT NOT NULL,
    status_class   TEXT NOT NULL,
    serial         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
    b0             BIGINT NOT NULL,
    b1             BIGINT NOT NULL,
    b2             BIGINT NOT NULL,
    b3             BIGINT NOT NULL,
    b4             BIGINT NOT NULL,
    b5             BIGINT NOT NULL,
    b6             BIGINT NOT NULL,
    b7             BIGINT NOT NULL,
    b8             BIGINT NOT NULL,
    b9             BIGINT NOT NULL,
    b10            BIGINT NOT NULL,
    b11            BIGINT NOT NULL,
    PRIMARY KEY (environment_id, width, start_minute, status_class, serial)
);

-- Per route, summed over nodes.
CREATE TABLE metric_routes (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    width          BIGINT NOT NULL,
    start_minute   BIGINT NOT NULL,
    route          TEXT NOT NULL,
    method         TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    serial         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
    b0             BIGINT NOT NULL,
    b1             BIGINT NOT NULL,
    b2             BIGINT NOT NULL,
    b3             BIGINT NOT NULL,
    b4             BIGINT NOT NULL,
    b5             BIGINT NOT NULL,
    b6             BIGINT NOT NULL,
    b7             BIGINT NOT NULL,
    b8             BIGINT NOT NULL,
    b9             BIGINT NOT NULL,
    b10            BIGINT NOT NULL,
    b11            BIGINT NOT NULL,
    PRIMARY KEY (environment_id, width, start_minute, route, method, status_class, serial)
);

-- Per node, summed over routes.
CREATE TABLE metric_nodes (
    environment_id BIGINT NOT NULL REFERENCES environments (id),
    width          BIGINT NOT NULL,
    start_minute   BIGINT NOT NULL,
    node_id        TEXT NOT NULL,
    status_class   TEXT NOT NULL,
    serial         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    sum_us         BIGINT NOT NULL,
    b0             BIGINT NOT NULL,
    b1             BIGINT NOT NULL,
    b2             BIGINT NOT NULL,
    b3             BIGINT NOT NULL,
    b4             BIGINT NOT NULL,
    b5             BIGINT NOT NULL,
    b6             BIGINT NOT NULL,
    b7             BIGINT NOT NULL,
    b8             BIGINT NOT NULL,
    b9             BIGINT NOT NULL,
    b10            BIGINT NOT NULL,
    b11            BIGINT NOT NULL,
    PRIMARY KEY (environment_id, width, start_minute, node_id, status_class, serial)
);

-- What the per-node, per-route rollups hold moves into the new tables.
INSERT INTO metric_totals (environment_id, width, start_minute, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 1, minute, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM metric_minutes GROUP BY environment_id, minute, status_class, serial;
INSERT INTO metric_totals (environment_id, width, start_minute, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 60, hour * 60, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM (
    SELECT environment_id, hour, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_hours
    UNION ALL
    SELECT environment_id, minute / 60, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_minutes
) AS both_widths
GROUP BY environment_id, hour, status_class, serial;
INSERT INTO metric_routes (environment_id, width, start_minute, route, method, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 1, minute, route, method, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM metric_minutes GROUP BY environment_id, minute, route, method, status_class, serial;
INSERT INTO metric_routes (environment_id, width, start_minute, route, method, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 60, hour * 60, route, method, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM (
    SELECT environment_id, hour, route, method, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_hours
    UNION ALL
    SELECT environment_id, minute / 60, route, method, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_minutes
) AS both_widths
GROUP BY environment_id, hour, route, method, status_class, serial;
INSERT INTO metric_nodes (environment_id, width, start_minute, node_id, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 1, minute, node_id, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM metric_minutes GROUP BY environment_id, minute, node_id, status_class, serial;
INSERT INTO metric_nodes (environment_id, width, start_minute, node_id, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
SELECT environment_id, 60, hour * 60, node_id, status_class, serial, SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11)
FROM (
    SELECT environment_id, hour, node_id, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_hours
    UNION ALL
    SELECT environment_id, minute / 60, node_id, status_class, serial, requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 FROM metric_minutes
) AS both_widths
GROUP BY environment_id, hour, node_id, status_class, serial;

DROP TABLE metric_minutes;
DROP TABLE metric_hours;
