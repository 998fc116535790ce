//! Request metrics: OTLP points folded into rollups of the whole environment, of each
//! route (over all nodes) and of each node (over all routes), per minute and per hour,
//! and read back for the dashboard. Cumulative points become deltas against the last
//! point of their series; a series whose start time changed or whose count went down was
//! reset (a restarted node, a new config) and counts from zero.

use std::collections::{BTreeMap, BTreeSet};

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

/// `($1, $2, …), ($n, …)`: `rows` rows of `columns` parameters each.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds rows to an aggregate table, summing into the rows already there.
async fn upsert_rollups(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    columns: &[&str],
    environment_id: i64,
    rows: &BTreeMap<RowKey, Rollup>,
) -> Result<()> {
    let key: Vec<&str> = ["environment_id", "width", "start_minute"]
        .into_iter()
        .chain(columns.iter().copied())
        .chain(["status_class", "serial"])
        .collect();
    let sums: Vec<String> =
        ["requests".to_owned(), "sum_us".to_owned()].into_iter().chain((0..BUCKETS).map(|i| format!("b{i}"))).collect();
    let additions: Vec<String> = sums.iter().map(|c| format!("{c} = {table}.{c} + excluded.{c}")).collect();
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO {table} ({}, {}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
            key.join(", "),
            sums.join(", "),
            placeholders(chunk.len(), key.len() + sums.len()),
            key.join(", "),
            additions.join(", "),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((width, start, own, status_class, serial), rollup) in chunk {
            q = q.bind(environment_id).bind(*width).bind(*start);
            for value in own {
                q = q.bind(value.clone());
            }
            q = q.bind(status_class.clone()).bind(*serial).bind(rollup.requests).bind(rollup.sum_us);
            for b in rollup.buckets {
                q = q.bind(b);
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn buckets_text(b: &[i64; BUCKETS]) -> String {
    b.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_buckets(s: &str) -> Option<[i64; BUCKETS]> {
    let v: Vec<i64> = s.split(',').map(str::parse).collect::<std::result::Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// Rollup widths in minutes. Minute rows serve the short ranges and are kept a day; hour
/// rows serve the long ranges and are kept for the retention period. Ingest writes both.
pub const MINUTE: i64 = 1;
pub const HOUR: i64 = 60;

/// What every rollup row holds: requests, their duration sum, their duration buckets.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rollup {
    requests: i64,
    sum_us: i64,
    buckets: [i64; BUCKETS],
}

impl Rollup {
    fn add(&mut self, requests: i64, sum_us: i64, buckets: &[i64; BUCKETS]) {
        self.requests = self.requests.saturating_add(requests);
        self.sum_us = self.sum_us.saturating_add(sum_us);
        for (a, b) in self.buckets.iter_mut().zip(buckets) {
            *a = a.saturating_add(*b);
        }
    }
}

/// A rollup row's key without the environment: width, start minute, the table's own
/// columns (route and method, or node), status class, serial.
pub(crate) type RowKey = (i64, i64, Vec<String>, String, i64);

/// Rows for each of the three aggregates, in the order of [`AGGREGATES`].
pub(crate) type Aggregates = [BTreeMap<RowKey, Rollup>; 3];

/// Rollups summed by ingest and not yet written, per environment.
pub(crate) type PendingRollups = BTreeMap<i64, Aggregates>;

/// The three aggregates ingest keeps, each a table with its own key columns.
const AGGREGATES: [(&str, &[&str]); 3] =
    [("metric_totals", &[]), ("metric_routes", &["route", "method"]), ("metric_nodes", &["node_id"])];

/// Rows per multi-row statement: 20 parameters each stays far below both databases' limits.
const ROWS_PER_STATEMENT: usize = 500;

/// The last cumulative point of a series: `(start_ns, requests, sum_us, buckets)`.
type Last = (String, i64, i64, [i64; BUCKETS]);

impl Store {
    /// Folds an export's points into the rollups; returns how many requests it added.
    ///
    /// The series' last points are updated at once (each node has its own); the export's
    /// sums for the whole environment, each route and each node, at minute and hour width,
    /// join those waiting for [`Store::flush_rollups`].
    pub async fn ingest_metrics(&self, environment_id: i64, points: &[Point]) -> Result<i64> {
        let mut tx = self.pool().begin().await?;
        // The last cumulative point of every series of the nodes in this export.
        let mut last: BTreeMap<(String, String, String, String), Last> = BTreeMap::new();
        let nodes: BTreeSet<&str> = points.iter().filter(|p| p.cumulative).map(|p| p.node_id.as_str()).collect();
        for node in &nodes {
            let rows = sqlx::query(
                "SELECT route, method, status_class, start_ns, requests, sum_us, buckets FROM metric_series \
                 WHERE environment_id = $1 AND node_id = $2",
            )
            .bind(environment_id)
            .bind(*node)
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                // A row whose buckets cannot be read counts as no row: the point counts whole.
                let Some(buckets) = parse_buckets(&get::<String>(r, "buckets")?) else { continue };
                let key = ((*node).to_owned(), get(r, "route")?, get(r, "method")?, get(r, "status_class")?);
                last.insert(key, (get(r, "start_ns")?, get(r, "requests")?, get(r, "sum_us")?, buckets));
            }
        }
        let mut seen: BTreeMap<(String, String, String, String), Last> = BTreeMap::new();
        let mut aggregates = Aggregates::default();
        let mut added = 0i64;
        for p in points {
            let (mut requests, mut sum_us, mut buckets) = (p.requests, p.sum_us, p.buckets);
            if p.cumulative {
                let key = (p.node_id.clone(), p.route.clone(), p.method.clone(), p.status_class.clone());
                let previous = seen.get(&key).or_else(|| last.get(&key));
                // Same series, not reset: only what is new since the last export counts.
                if let Some((start, last_requests, last_sum, last_buckets)) = previous
                    && *start == p.start_ns
                    && p.requests >= *last_requests
                {
                    // Saturating: rows stored before counts were bounded may hold anything.
                    requests = requests.saturating_sub(*last_requests);
                    sum_us = sum_us.saturating_sub(*last_sum).max(0);
                    for (b, l) in buckets.iter_mut().zip(last_buckets) {
                        *b = b.saturating_sub(*l).max(0);
                    }
                }
                seen.insert(key, (p.start_ns.clone(), p.requests, p.sum_us, p.buckets));
            }
            if requests <= 0 {
                continue;
            }
            added = added.saturating_add(requests);
            let minute = p.time_ms.div_euclid(60_000);
            for width in [MINUTE, HOUR] {
                let start = minute - minute.rem_euclid(width);
                let own: [Vec<String>; 3] = [vec![], vec![p.route.clone(), p.method.clone()], vec![p.node_id.clone()]];
                for (aggregate, columns) in aggregates.iter_mut().zip(own) {
                    let key = (width, start, columns, p.status_class.clone(), p.serial);
                    aggregate.entry(key).or_default().add(requests, sum_us.max(0), &buckets);
                }
            }
        }
        self.store_series(&mut tx, environment_id, &seen).await?;
        tx.commit().await?;
        self.add_pending(environment_id, aggregates);
        Ok(added)
    }

    /// Adds rollups to those waiting for [`Store::flush_rollups`].
    fn add_pending(&self, environment_id: i64, aggregates: Aggregates) {
        let mut pending = self.pending_rollups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let into = pending.entry(environment_id).or_default();
        for (into, rows) in into.iter_mut().zip(aggregates) {
            for (key, r) in rows {
                into.entry(key).or_default().add(r.requests, r.sum_us, &r.buckets);
            }
        }
    }

    /// Writes the rollups ingest has summed since the last flush, in one transaction.
    ///
    /// Every node adds to the same few rows (the environment's current minute and hour,
    /// its routes'), so writing them per export would make all exports queue on those
    /// rows' locks. Ingest sums them in memory instead, and this writes the sums: once a
    /// second in the background, and before the dashboard reads. If the write fails the
    /// sums go back into memory for the next flush. Returns the rows written.
    pub async fn flush_rollups(&self) -> Result<usize> {
        let taken =
            std::mem::take(&mut *self.pending_rollups.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if taken.is_empty() {
            return Ok(0);
        }
        let written = async {
            let mut tx = self.pool().begin().await?;
            let mut rows = 0;
            for (environment_id, aggregates) in &taken {
                for ((table, columns), aggregate) in AGGREGATES.iter().zip(aggregates) {
                    upsert_rollups(&mut tx, table, columns, *environment_id, aggregate).await?;
                    rows += aggregate.len();
                }
            }
            tx.commit().await?;
            Ok::<_, super::StoreError>(rows)
        }
        .await;
        if written.is_err() {
            for (environment_id, aggregates) in taken {
                self.add_pending(environment_id, aggregates);
            }
        }
        written
    }

    /// Remembers the last cumulative point of each series just read.
    async fn store_series(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        environment_id: i64,
        seen: &BTreeMap<(String, String, String, String), Last>,
    ) -> Result<()> {
        let rows: Vec<_> = seen.iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let values = placeholders(chunk.len(), 9);
            let sql = format!(
                "INSERT INTO metric_series (environment_id, node_id, route, method, status_class, start_ns, requests, \
                 sum_us, buckets) VALUES {values} ON CONFLICT (environment_id, node_id, route, method, status_class) \
                 DO UPDATE SET start_ns = excluded.start_ns, requests = excluded.requests, sum_us = excluded.sum_us, \
                 buckets = excluded.buckets"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((node, route, method, status), (start, requests, sum_us, buckets)) in chunk {
                q = q
                    .bind(environment_id)
                    .bind(node.clone())
                    .bind(route.clone())
                    .bind(method.clone())
                    .bind(status.clone())
                    .bind(start.clone())
                    .bind(*requests)
                    .bind(*sum_us)
                    .bind(buckets_text(buckets));
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Drops minute rows that start before `before_minute` and hour rows that start before
    /// hour `before_hour` (retention), and consumers' usage as old as the latter. Returns
    /// the rollup rows dropped.
    pub async fn prune_rollups(&self, before_minute: i64, before_hour: i64) -> Result<u64> {
        let mut tx = self.pool().begin().await?;
        let mut dropped = 0;
        for (table, _) in AGGREGATES {
            for (width, before) in [(MINUTE, before_minute), (HOUR, before_hour.saturating_mul(60))] {
                let sql = format!("DELETE FROM {table} WHERE width = $1 AND start_minute < $2");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(width).bind(before).execute(&mut *tx).await?;
                dropped += done.rows_affected();
            }
        }
        sqlx::query("DELETE FROM consumer_minutes WHERE minute < $1")
            .bind(before_hour.saturating_mul(60))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(dropped)
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
/// status class). Each reads its own aggregate, so a week of a large fleet is a few
/// thousand rows, whatever the number of nodes times routes.
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

const SUMS: &str = "CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(sum_us) AS BIGINT) AS sum_us, \
    CAST(SUM(b0) AS BIGINT) AS b0, CAST(SUM(b1) AS BIGINT) AS b1, CAST(SUM(b2) AS BIGINT) AS b2, \
    CAST(SUM(b3) AS BIGINT) AS b3, CAST(SUM(b4) AS BIGINT) AS b4, CAST(SUM(b5) AS BIGINT) AS b5, \
    CAST(SUM(b6) AS BIGINT) AS b6, CAST(SUM(b7) AS BIGINT) AS b7, CAST(SUM(b8) AS BIGINT) AS b8, \
    CAST(SUM(b9) AS BIGINT) AS b9, CAST(SUM(b10) AS BIGINT) AS b10, CAST(SUM(b11) AS BIGINT) AS b11";

impl Store {
    /// Rollups of `width` ([`MINUTE`] or [`HOUR`]) from the one holding `from_minute` on,
    /// summed by `by`; slots are `step` minutes wide, and an hour row that starts before
    /// `from_minute` counts in the first slot. Rows come back as [`Minute`]s with the
    /// grouped-away columns empty.
    pub async fn metric_groups(
        &self,
        environment_id: i64,
        from_minute: i64,
        step: i64,
        by: Grouping,
        width: i64,
    ) -> Result<Vec<Minute>> {
        let since = from_minute - from_minute.rem_euclid(width.max(1));
        let sql = match by {
            // Slots count from `from_minute`; a row before it (an hour begun earlier) is
            // clamped into the first.
            Grouping::Slot => format!(
                "SELECT CASE WHEN start_minute < $2 THEN 0 ELSE (start_minute - $2) / $3 END AS slot, status_class, \
                 {SUMS} FROM metric_totals WHERE environment_id = $1 AND width = $4 AND start_minute >= $5 \
                 GROUP BY CASE WHEN start_minute < $2 THEN 0 ELSE (start_minute - $2) / $3 END, status_class"
            ),
            Grouping::Route => format!(
                "SELECT method, route, status_class, {SUMS} FROM metric_routes WHERE environment_id = $1 \
                 AND width = $2 AND start_minute >= $3 GROUP BY method, route, status_class"
            ),
            Grouping::Node => format!(
                "SELECT node_id, status_class, {SUMS} FROM metric_nodes WHERE environment_id = $1 \
                 AND width = $2 AND start_minute >= $3 GROUP BY node_id, status_class"
            ),
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(environment_id);
        let query = match by {
            Grouping::Slot => query.bind(from_minute).bind(step.max(1)).bind(width).bind(since),
            Grouping::Route | Grouping::Node => query.bind(width).bind(since),
        };
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(|r| grouped_from_row(r, by, from_minute, step)).collect()
    }
}
