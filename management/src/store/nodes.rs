//! The fleet: the last status each node reported.

use serde::{Deserialize, Serialize};

use super::{Result, Store, get, now_ms};

/// A node's status report, as the node sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub node_id: String,
    pub hostname: String,
    /// The node's build.
    pub version: String,
    pub serial: Option<i64>,
    pub config_digest: Option<String>,
    pub last_fetch_at: Option<String>,
    pub last_result: String,
    pub reported_at: String,
}

/// A report as stored, with when the control plane received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub report: Report,
    pub seen_at: i64,
}

fn seen_from_row(row: &sqlx::any::AnyRow) -> Result<(i64, Seen)> {
    let seen = Seen {
        report: Report {
            node_id: get(row, "node_id")?,
            hostname: get(row, "hostname")?,
            version: get(row, "build")?,
            serial: get(row, "serial")?,
            config_digest: get(row, "config_digest")?,
            last_fetch_at: get(row, "last_fetch_at")?,
            last_result: get(row, "last_result")?,
            reported_at: get(row, "reported_at")?,
        },
        seen_at: get(row, "seen_at")?,
    };
    Ok((get(row, "environment_id")?, seen))
}

impl Store {
    /// Records a node's latest report (one row per node, replaced by each report).
    pub async fn record_node(&self, environment_id: i64, r: &Report) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (environment_id, node_id, hostname, build, serial, config_digest, last_fetch_at, \
             last_result, reported_at, seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (environment_id, node_id) DO UPDATE SET hostname = excluded.hostname, build = excluded.build, \
             serial = excluded.serial, config_digest = excluded.config_digest, last_fetch_at = excluded.last_fetch_at, \
             last_result = excluded.last_result, reported_at = excluded.reported_at, seen_at = excluded.seen_at",
        )
        .bind(environment_id)
        .bind(&r.node_id)
        .bind(&r.hostname)
        .bind(&r.version)
        .bind(r.serial)
        .bind(&r.config_digest)
        .bind(&r.last_fetch_at)
        .bind(&r.last_result)
        .bind(&r.reported_at)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn nodes(&self, environment_id: i64) -> Result<Vec<Seen>> {
        let rows = sqlx::query(
            "SELECT environment_id, node_id, hostname, build, serial, config_digest, last_fetch_at, last_result, \
             reported_at, seen_at FROM nodes WHERE environment_id = $1 ORDER BY node_id",
        )
        .bind(environment_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok(seen_from_row(row)?.1)).collect()
    }

    /// Every node of every environment, with its environment id: one query for a fleet view.
    pub async fn all_nodes(&self) -> Result<Vec<(i64, Seen)>> {
        let rows = sqlx::query(
            "SELECT environment_id, node_id, hostname, build, serial, config_digest, last_fetch_at, last_result, \
             reported_at, seen_at FROM nodes ORDER BY environment_id, node_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(seen_from_row).collect()
    }
}
