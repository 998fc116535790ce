//! Storage: one schema on PostgreSQL (production) and SQLite (the embedded default).
//!
//! Queries go through sqlx's `Any` driver so that every statement is written once and
//! runs on both; `$1`-style placeholders work on both, and every value is an integer or
//! text (times are Unix milliseconds) so that both map them the same way. Each aggregate
//! has its own module; writes that change what operators manage go through [`Write`],
//! which appends to the audit chain in the same transaction.

pub mod audit;
pub mod gateways;
pub mod metrics;
pub mod nodes;
pub mod portal;
pub mod promotions;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod versions;

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor as _, SqlSafeStr as _, Transaction};

pub use audit::{AuditEntry, Change};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://…")]
    Url(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the database refused a row because of a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }

    /// Whether the database could not be reached (down, restarting, pool exhausted), as
    /// opposed to refusing a query: the caller may retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_)
                | Self::Db(
                    sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_)
                )
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: Kind,
    /// Woken whenever this process signs a new bundle, so long-polling nodes answer at once.
    bundles: std::sync::Arc<tokio::sync::Notify>,
    /// The newest bundle this process signed per environment: `(serial, JWS)`. Nodes woken
    /// by a promotion are answered from here, so a fleet's wake-up costs the database nothing.
    signed: std::sync::Arc<std::sync::Mutex<SignedBundles>>,
    /// Metric rollups summed by ingest, written by [`Store::flush_rollups`].
    pending_rollups: std::sync::Arc<std::sync::Mutex<metrics::PendingRollups>>,
}

/// Environment id -> (serial, JWS) of the newest bundle signed here.
type SignedBundles = std::collections::HashMap<i64, (i64, std::sync::Arc<str>)>;

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control plane", include_str!("../../../migrations/postgres/0001_control_plane.sql")),
    (2, "operator ui", include_str!("../../../migrations/postgres/0002_operator_ui.sql")),
    (3, "portal", include_str!("../../../migrations/postgres/0003_portal.sql")),
    (4, "metrics", include_str!("../../../migrations/postgres/0004_metrics.sql")),
    (5, "metric hours", include_str!("../../../migrations/postgres/0005_metric_hours.sql")),
    (6, "consumer usage", include_str!("../../../migrations/postgres/0006_consumer_usage.sql")),
    (7, "metric aggregates", include_str!("../../../migrations/postgres/0007_metric_aggregates.sql")),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control plane", include_str!("../../../migrations/sqlite/0001_control_plane.sql")),
    (2, "operator ui", include_str!("../../../migrations/sqlite/0002_operator_ui.sql")),
    (3, "portal", include_str!("../../../migrations/sqlite/0003_portal.sql")),
    (4, "metrics", include_str!("../../../migrations/sqlite/0004_metrics.sql")),
    (5, "metric hours", include_str!("../../../migrations/sqlite/0005_metric_hours.sql")),
    (6, "consumer usage", include_str!("../../../migrations/sqlite/0006_consumer_usage.sql")),
    (7, "metric aggregates", include_str!("../../../migrations/sqlite/0007_metric_aggregates.sql")),
];

impl Store {
    /// Connects to `postgres://…` or `sqlite://…` (the SQLite file is created if missing).
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (kind, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Kind::Postgres, url.to_owned())
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let url = if rest.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            (Kind::Sqlite, url)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let options = AnyPoolOptions::new()
            // SQLite has one writer at a time anyway; a few readers beside it are plenty.
            .max_connections(if kind == Kind::Sqlite { 4 } else { 10 })
            // A database that cannot be reached within this answers 503, not a hang.
            .acquire_timeout(Duration::from_secs(5));
        let options = if kind == Kind::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; the busy timeout makes a second
                    // writer wait for the first instead of failing; SQLite leaves foreign
                    // keys off unless asked.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                        .await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect(&url).await?;
        Ok(Self {
            pool,
            kind,
            bundles: std::sync::Arc::default(),
            signed: std::sync::Arc::default(),
            pending_rollups: std::sync::Arc::default(),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the database answers a trivial query within `within`.
    pub async fn ping(&self, within: Duration) -> Result<()> {
        match tokio::time::timeout(within, sqlx::query("SELECT 1").execute(&self.pool)).await {
            Ok(done) => done.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {} ms", within.as_millis()))),
        }
    }

    /// The connection pool, for tools and tests that need raw SQL.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies the migrations this build knows and the database has not run yet.
    pub async fn migrate(&self) -> Result<()> {
        let source = match self.kind {
            Kind::Postgres => POSTGRES_MIGRATIONS,
            Kind::Sqlite => SQLITE_MIGRATIONS,
        };
        let migrations = source
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect();
        Migrator::with_migrations(migrations).run(&self.pool).await?;
        Ok(())
    }

    /// Starts an audited change. The audit chain's head is locked first, so audited
    /// changes run one at a time and each sees the one before it.
    pub async fn write(&self) -> Result<Write> {
        let mut tx = self.pool.begin().await?;
        let row: AnyRow = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut *tx)
            .await?;
        let seq = get(&row, "seq")?;
        let prev_hash = get(&row, "hash")?;
        Ok(Write { tx, seq, prev_hash })
    }

    /// Records a bundle just committed and wakes the requests waiting for a new one.
    pub fn bundle_signed(&self, environment_id: i64, serial: i64, bundle: &str) {
        if let Ok(mut signed) = self.signed.lock() {
            let newer = signed.get(&environment_id).is_none_or(|(known, _)| *known < serial);
            if newer {
                signed.insert(environment_id, (serial, std::sync::Arc::from(bundle)));
            }
        }
        self.bundles.notify_waiters();
    }

    /// The newest bundle this process signed for an environment, if any.
    pub fn signed_bundle(&self, environment_id: i64) -> Option<(i64, std::sync::Arc<str>)> {
        self.signed.lock().ok()?.get(&environment_id).cloned()
    }

    /// The signal [`Store::bundle_signed`] sends.
    pub fn bundle_signals(&self) -> &tokio::sync::Notify {
        &self.bundles
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// An audited change in progress: do the change on [`Write::tx`], then [`Write::commit`]
/// with what it was.
pub struct Write {
    pub tx: Transaction<'static, Any>,
    seq: i64,
    prev_hash: String,
}

impl Write {
    /// Records the change in the audit chain and commits both together.
    pub async fn commit(mut self, change: Change) -> Result<AuditEntry> {
        let entry = AuditEntry::new(self.seq, now_ms(), change, self.prev_hash);
        audit::append(&mut self.tx, &entry).await?;
        self.tx.commit().await?;
        Ok(entry)
    }
}

/// Reads a column, naming it in the error.
pub(crate) fn get<T>(row: &AnyRow, column: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    use sqlx::Row as _;
    Ok(row.try_get(column)?)
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    weir_gateway::time::rfc3339(t)
}
