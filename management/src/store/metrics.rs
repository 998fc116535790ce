//! Request metrics: OTLP points folded into per-minute rollups (and, after a day, into
//! hourly ones), and read back for the dashboard. Cumulative points become deltas against the last point of their series;
//! a series whose start time changed or whose count went down was reset (a restarted
//! node, a new config) and counts from zero.

use sqlx::any::AnyRow;

use super::{Result, Store, get};

/// Buckets per histogram (the gateway's 11 bounds, then everything slower).
pub const BUCKETS: usize = 12;

/// One histogram data point of an export.
#[derive(Debug, Clone)]
pub struct Point {
    pub node_id: String,
    pub route: String,
    pub method: String,
    pub status_class: String,
    pub serial: i64,
    pub start_ns: String,
    pub time_ms: i64,
    /// Cumulative (since `start_ns`) rather than a delta.
    pub cumulative: bool,
    pub requests: i64,
    pub sum_us: i64,
    pub buckets: [i64; BUCKETS],
}

/// A consumer's cumulative request count from one node.
#[derive(Debug, Clone)]
pub struct Usage {
    pub node_id: String,
    pub consumer: String,
    pub start_ns: String,
    pub time_ms: i64,
    pub requests: i64,
}

/// Rollups of one minute (or, grouped, of a slot), one series or a group of them.
#[derive(Debug, Clone)]
pub struct Minute {
    pub minute: i64,
    pub node_id: String,
    pub route: String,
    pub method: String,
    pub status_class: String,
    pub requests: i64,
    pub sum_us: i64,
    pub buckets: [i64; BUCKETS],
}

fn buckets_text(b: &[i64; BUCKETS]) -> String {
    b.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_buckets(s: &str) -> Option<[i64; BUCKETS]> {
    let v: Vec<i64> = s.split(',').map(str::parse).collect::<std::result::Result<_, _>>().ok()?;
    v.try_into().ok()
}

impl Store {
    /// Folds an export's points into the rollups; returns how many requests it added.
    pub async fn ingest_metrics(&self, environment_id: i64, points: &[Point]) -> Result<i64> {
        let mut tx = self.pool().begin().await?;
        let mut added = 0i64;
        for p in points {
            let (mut requests, mut sum_us, mut buckets) = (p.requests, p.sum_us, p.buckets);
            if p.cumulative {
                let last = sqlx::query(
                    "SELECT start_ns, requests, sum_us, buckets FROM metric_series WHERE environment_id = $1 \
                     AND node_id = $2 AND route = $3 AND method = $4 AND status_class = $5",
                )
                .bind(environment_id)
                .bind(&p.node_id)
                .bind(&p.route)
                .bind(&p.method)
                .bind(&p.status_class)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(last) = last {
                    let start: String = get(&last, "start_ns")?;
                    let last_requests: i64 = get(&last, "requests")?;
                    let last_buckets = parse_buckets(&get::<String>(&last, "buckets")?);
                    // Same series, not reset: only what is new since the last export counts.
                    if let (true, Some(lb)) = (start == p.start_ns && p.requests >= last_requests, last_buckets) {
                        // Saturating: rows stored before counts were bounded may hold anything.
                        requests = requests.saturating_sub(last_requests);
                        sum_us = sum_us.saturating_sub(get::<i64>(&last, "sum_us")?).max(0);
                        for (b, l) in buckets.iter_mut().zip(lb) {
                            *b = b.saturating_sub(l).max(0);
                        }
                    }
                }
                sqlx::query(
                    "INSERT INTO metric_series (environment_id, node_id, route, method, status_class, start_ns, requests, \
                     sum_us, buckets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (environment_id, node_id, \
                     route, method, status_class) DO UPDATE SET start_ns = excluded.start_ns, requests = excluded.requests, \
                     sum_us = excluded.sum_us, buckets = excluded.buckets",
                )
                .bind(environment_id)
                .bind(&p.node_id)
                .bind(&p.route)
                .bind(&p.method)
                .bind(&p.status_class)
                .bind(&p.start_ns)
                .bind(p.requests)
                .bind(p.sum_us)
                .bind(buckets_text(&p.buckets))
                .execute(&mut *tx)
                .await?;
            }
            if requests <= 0 {
                continue;
            }
            added = added.saturating_add(requests);
            let mut q = sqlx::query(
                "INSERT INTO metric_minutes (environment_id, minute, node_id, route, method, status_class, serial, \
                 requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
                 ON CONFLICT (environment_id, minute, node_id, route, method, status_class, serial) DO UPDATE SET \
                 requests = metric_minutes.requests + excluded.requests, sum_us = metric_minutes.sum_us + excluded.sum_us, \
                 b0 = metric_minutes.b0 + excluded.b0, b1 = metric_minutes.b1 + excluded.b1, b2 = metric_minutes.b2 + excluded.b2, b3 = metric_minutes.b3 + excluded.b3, b4 = metric_minutes.b4 + excluded.b4, b5 = metric_minutes.b5 + excluded.b5, b6 = metric_minutes.b6 + excluded.b6, b7 = metric_minutes.b7 + excluded.b7, b8 = metric_minutes.b8 + excluded.b8, b9 = metric_minutes.b9 + excluded.b9, b10 = metric_minutes.b10 + excluded.b10, b11 = metric_minutes.b11 + excluded.b11",
            )
            .bind(environment_id)
            .bind(p.time_ms / 60_000)
            .bind(&p.node_id)
            .bind(&p.route)
            .bind(&p.method)
            .bind(&p.status_class)
            .bind(p.serial)
            .bind(requests)
            .bind(sum_us.max(0));
            for b in buckets {
                q = q.bind(b);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Folds minute rows older than `before_minute` (whole hours only) into hourly rows,
    /// then drops hourly rows older than `before_hour` (retention). Returns the minute
    /// rows folded.
    pub async fn roll_up_metrics(&self, before_minute: i64, before_hour: i64) -> Result<u64> {
        let cutoff = before_minute - before_minute.rem_euclid(60);
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO metric_hours (environment_id, hour, node_id, route, method, status_class, serial, requests, \
             sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11) SELECT environment_id, minute / 60, node_id, route, method, status_class, serial, \
             SUM(requests), SUM(sum_us), SUM(b0), SUM(b1), SUM(b2), SUM(b3), SUM(b4), SUM(b5), SUM(b6), SUM(b7), SUM(b8), SUM(b9), SUM(b10), SUM(b11) FROM metric_minutes WHERE minute < $1 \
             GROUP BY environment_id, minute / 60, node_id, route, method, status_class, serial \
             ON CONFLICT (environment_id, hour, node_id, route, method, status_class, serial) DO UPDATE SET \
             requests = metric_hours.requests + excluded.requests, sum_us = metric_hours.sum_us + excluded.sum_us, \
             b0 = metric_hours.b0 + excluded.b0, b1 = metric_hours.b1 + excluded.b1, b2 = metric_hours.b2 + excluded.b2, b3 = metric_hours.b3 + excluded.b3, b4 = metric_hours.b4 + excluded.b4, b5 = metric_hours.b5 + excluded.b5, b6 = metric_hours.b6 + excluded.b6, b7 = metric_hours.b7 + excluded.b7, b8 = metric_hours.b8 + excluded.b8, b9 = metric_hours.b9 + excluded.b9, b10 = metric_hours.b10 + excluded.b10, b11 = metric_hours.b11 + excluded.b11",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let folded = sqlx::query("DELETE FROM metric_minutes WHERE minute < $1").bind(cutoff).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM metric_hours WHERE hour < $1").bind(before_hour).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM consumer_minutes WHERE minute < $1")
            .bind(before_hour.saturating_mul(60))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(folded.rows_affected())
    }

    /// Folds consumers' cumulative counts into per-minute usage (resets count from zero).
    pub async fn ingest_usage(&self, environment_id: i64, points: &[Usage]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for p in points {
            let last = sqlx::query(
                "SELECT start_ns, requests FROM consumer_series WHERE environment_id = $1 AND node_id = $2 \
                 AND consumer = $3",
            )
            .bind(environment_id)
            .bind(&p.node_id)
            .bind(&p.consumer)
            .fetch_optional(&mut *tx)
            .await?;
            let mut delta = p.requests;
            if let Some(last) = last {
                let (start, count): (String, i64) = (get(&last, "start_ns")?, get(&last, "requests")?);
                if start == p.start_ns && p.requests >= count {
                    delta = delta.saturating_sub(count);
                }
            }
            sqlx::query(
                "INSERT INTO consumer_series (environment_id, node_id, consumer, start_ns, requests) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (environment_id, node_id, consumer) DO UPDATE SET \
                 start_ns = excluded.start_ns, requests = excluded.requests",
            )
            .bind(environment_id)
            .bind(&p.node_id)
            .bind(&p.consumer)
            .bind(&p.start_ns)
            .bind(p.requests)
            .execute(&mut *tx)
            .await?;
            if delta > 0 {
                sqlx::query(
                    "INSERT INTO consumer_minutes (environment_id, minute, consumer, node_id, requests) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (environment_id, minute, consumer, node_id) DO UPDATE SET \
                     requests = consumer_minutes.requests + excluded.requests",
                )
                .bind(environment_id)
                .bind(p.time_ms / 60_000)
                .bind(&p.consumer)
                .bind(&p.node_id)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Requests of each consumer since `since_minute`, over every environment.
    pub async fn consumer_requests(&self, since_minute: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT consumer, CAST(SUM(requests) AS BIGINT) AS requests FROM consumer_minutes WHERE minute >= $1 \
             GROUP BY consumer",
        )
        .bind(since_minute)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((get(r, "consumer")?, get(r, "requests")?))).collect()
    }
}

/// How the dashboard groups rollups: by time slot, by route, or by node (each also by
/// status class). The database does the summing, so a week of a large fleet is a few
/// hundred rows, not millions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Slot,
    Route,
    Node,
}

fn grouped_from_row(r: &AnyRow, by: Grouping, from_minute: i64, step: i64) -> Result<Minute> {
    let mut buckets = [0i64; BUCKETS];
    for (i, b) in buckets.iter_mut().enumerate() {
        *b = get(r, &format!("b{i}"))?;
    }
    let text = |c: &str| -> Result<String> { get(r, c) };
    Ok(Minute {
        minute: if by == Grouping::Slot { from_minute + get::<i64>(r, "slot")? * step } else { from_minute },
        node_id: if by == Grouping::Node { text("node_id")? } else { String::new() },
        route: if by == Grouping::Route { text("route")? } else { String::new() },
        method: if by == Grouping::Route { text("method")? } else { String::new() },
        status_class: text("status_class")?,
        requests: get(r, "requests")?,
        sum_us: get(r, "sum_us")?,
        buckets,
    })
}

impl Store {
    /// Rollups since `from_minute` (minute and hourly ones together) summed by `by`;
    /// slots are `step` minutes wide. Rows come back as [`Minute`]s with the grouped-away
    /// columns empty.
    pub async fn metric_groups(
        &self,
        environment_id: i64,
        from_minute: i64,
        step: i64,
        by: Grouping,
    ) -> Result<Vec<Minute>> {
        let (minutes_sql, hours_sql) = match by {
            Grouping::Slot => (
                "SELECT (minute - $2) / $3 AS slot, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_minutes WHERE environment_id = $1 AND minute >= $2 GROUP BY (minute - $2) / $3, status_class",
                "SELECT (hour * 60 - $2) / $3 AS slot, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_hours WHERE environment_id = $1 AND hour * 60 >= $2 GROUP BY (hour * 60 - $2) / $3, status_class",
            ),
            Grouping::Route => (
                "SELECT method, route, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_minutes WHERE environment_id = $1 AND minute >= $2 GROUP BY method, route, status_class",
                "SELECT method, route, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_hours WHERE environment_id = $1 AND hour * 60 >= $2 GROUP BY method, route, status_class",
            ),
            Grouping::Node => (
                "SELECT node_id, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_minutes WHERE environment_id = $1 AND minute >= $2 GROUP BY node_id, status_class",
                "SELECT node_id, status_class, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11 FROM metric_hours WHERE environment_id = $1 AND hour * 60 >= $2 GROUP BY node_id, status_class",
            ),
        };
        let mut out = Vec::new();
        for sql in [minutes_sql, hours_sql] {
            let query = sqlx::query(sql).bind(environment_id).bind(from_minute);
            // Only the slot queries divide by the step; PostgreSQL refuses unused parameters.
            let query = if by == Grouping::Slot { query.bind(step.max(1)) } else { query };
            let rows = query.fetch_all(self.pool()).await?;
            for r in &rows {
                out.push(grouped_from_row(r, by, from_minute, step)?);
            }
        }
        Ok(out)
    }
}
