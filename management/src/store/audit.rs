//! The audit log: append-only and hash-chained, so that editing or deleting an entry
//! breaks the chain and `weir-control audit verify` says where.

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::{Result, Store, get};

/// What changed, as the code doing it describes it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub detail: String,
}

/// One link of the chain.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before_digest: Option<String>,
    pub after_digest: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    pub(crate) fn new(seq: i64, at: i64, change: Change, prev_hash: String) -> Self {
        let mut entry = Self {
            seq,
            at,
            actor: change.actor,
            action: change.action.to_owned(),
            target: change.target,
            before_digest: change.before,
            after_digest: change.after,
            detail: change.detail,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry.expected_hash();
        entry
    }

    /// The hash this entry must carry: SHA-256 over the previous hash and every field,
    /// each length-prefixed so that no two different entries hash the same input.
    pub fn expected_hash(&self) -> String {
        let mut h = Sha256::new();
        let absent = "\u{0}";
        for field in [
            self.prev_hash.as_str(),
            &self.seq.to_string(),
            &self.at.to_string(),
            &self.actor,
            &self.action,
            &self.target,
            self.before_digest.as_deref().unwrap_or(absent),
            self.after_digest.as_deref().unwrap_or(absent),
            &self.detail,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            seq: get(row, "seq")?,
            at: get(row, "at")?,
            actor: get(row, "actor")?,
            action: get(row, "action")?,
            target: get(row, "target")?,
            before_digest: get(row, "before_digest")?,
            after_digest: get(row, "after_digest")?,
            detail: get(row, "detail")?,
            prev_hash: get(row, "prev_hash")?,
            hash: get(row, "hash")?,
        })
    }
}

pub(crate) async fn append(tx: &mut Transaction<'static, Any>, e: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, before_digest, after_digest, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(e.seq)
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.before_digest)
    .bind(&e.after_digest)
    .bind(&e.detail)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&e.hash).execute(&mut **tx).await?;
    Ok(())
}

/// Where the chain is broken, if it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub entries: i64,
    pub ok: bool,
    /// The first entry that does not fit the chain, and why.
    pub broken_at: Option<i64>,
    pub problem: Option<String>,
}

impl Store {
    /// Audit entries, newest first.
    pub async fn audit_entries(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2")
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(AuditEntry::from_row).collect()
    }

    /// Entries matching exact `action` and `actor` (empty = any) and with `target`
    /// containing the given text, newest first.
    pub async fn search_audit(&self, action: &str, actor: &str, target: &str, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE ($1 = '' OR action = $1) AND ($2 = '' OR actor = $2) \
             AND ($3 = '' OR target LIKE $4 ESCAPE '\\') ORDER BY seq DESC LIMIT $5",
        )
        .bind(action)
        .bind(actor)
        .bind(target)
        .bind(format!("%{}%", target.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(AuditEntry::from_row).collect()
    }

    /// The distinct actions in the log, for filters.
    pub async fn audit_actions(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT action FROM audit_log ORDER BY action").fetch_all(self.pool()).await?;
        rows.iter().map(|r| get(r, "action")).collect()
    }

    /// Walks the whole chain: every hash recomputed, every link and sequence number
    /// checked, and the head compared with the last entry (which catches truncation).
    pub async fn verify_audit(&self) -> Result<Verification> {
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq").fetch_all(self.pool()).await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(self.pool()).await?;
        let (head_seq, head_hash): (i64, String) = (get(&head, "seq")?, get(&head, "hash")?);
        let mut prev = "genesis".to_owned();
        let mut count = 0;
        let broken = |at: i64, problem: String, entries: i64| Verification {
            entries,
            ok: false,
            broken_at: Some(at),
            problem: Some(problem),
        };
        for row in &rows {
            let e = AuditEntry::from_row(row)?;
            count += 1;
            if e.seq != count {
                return Ok(broken(e.seq, format!("entry {count} is missing (found {} next)", e.seq), count));
            }
            if e.prev_hash != prev {
                return Ok(broken(e.seq, "does not link to the entry before it".into(), count));
            }
            if e.expected_hash() != e.hash {
                return Ok(broken(e.seq, "its content does not match its hash (edited)".into(), count));
            }
            prev = e.hash;
        }
        if head_seq != count || head_hash != prev {
            return Ok(broken(count + 1, format!("the chain ends at {count} but its head says {head_seq}"), count));
        }
        Ok(Verification { entries: count, ok: true, broken_at: None, problem: None })
    }
}
