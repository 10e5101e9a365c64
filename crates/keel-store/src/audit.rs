//! The audit outbox: every audit record a service makes is a row of `audit_outbox` in its own
//! schema, and the audit relay ([`crate::relay::Source::Audit`]) carries it to JetStream with the
//! event relay's ordering and dedupe rules. A record therefore survives NATS being down, and the
//! record of a change commits with the change or not at all:
//!
//! - [`AuditLog::change`] runs a command with its success record *pending*; the command's
//!   append of events takes the record and inserts it **in the same statement** as the events
//!   (group commit keeps each command's record with its own rows). A command that appended
//!   nothing (an idempotent repeat) gets its record written on its own; one that failed gets a
//!   `failed` record instead.
//! - [`AuditLog::record`] writes a record that belongs to no change (a denial, a token
//!   exchange, `auth.degraded`).
//!
//! The pending record is a tokio task-local: the append runs in the caller's task (before the
//! group-commit dispatcher takes over), so it finds the record without every command signature
//! carrying it.

use std::future::Future;
use std::sync::Mutex;

use keel_bus::audit::{AuditRecord, AuditResult};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Database, Result};

/// The most bytes of one stored record; longer reasons are cut to fit.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
const MAX_REASON_CHARS: usize = 2048;

pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./outbox-migrations")
}

tokio::task_local! {
    static PENDING: Mutex<Option<AuditRecord>>;
}

/// The record a [`AuditLog::change`] in this task is waiting to commit: an append of events
/// stores a copy with them, and calls [`committed`] once its statement has committed.
pub(crate) fn pending() -> Option<AuditRecord> {
    PENDING
        .try_with(|cell| cell.lock().ok().and_then(|r| r.clone()))
        .ok()
        .flatten()
}

/// The pending record has committed with the events: nothing more to write.
pub(crate) fn committed() {
    let _ = take_pending();
}

fn take_pending() -> Option<AuditRecord> {
    PENDING
        .try_with(|cell| cell.lock().ok().and_then(|mut r| r.take()))
        .ok()
        .flatten()
}

/// A record as its outbox row: id, the tenant token of its subject and the JSON.
pub(crate) struct Row {
    pub id: Uuid,
    pub tenant: String,
    pub record: Value,
}

impl Row {
    pub(crate) fn of(record: &AuditRecord) -> Result<Self> {
        let mut record = record.clone();
        if let Some(reason) = &mut record.reason
            && reason.chars().count() > MAX_REASON_CHARS
        {
            *reason = reason.chars().take(MAX_REASON_CHARS).collect();
        }
        let json = serde_json::to_value(&record).map_err(|e| crate::Error::Audit(e.to_string()))?;
        if json.to_string().len() > MAX_RECORD_BYTES {
            return Err(crate::Error::Audit(format!(
                "audit record {} is over {MAX_RECORD_BYTES} bytes",
                record.id
            )));
        }
        Ok(Self {
            id: record.id,
            tenant: record.tenant.clone(),
            record: json,
        })
    }
}

/// Where a service writes its audit records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    pool: PgPool,
}

impl AuditLog {
    /// The audit outbox in `db`'s schema (created or migrated). [`crate::Store::open`] creates it
    /// too; a schema without aggregates (the timeline) opens it here.
    pub async fn open(db: &Database) -> Result<Self> {
        crate::migrate(db.pool(), migrator()).await?;
        Ok(Self::on(db.pool().clone()))
    }

    /// On a pool whose schema already has the outbox.
    pub fn on(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a record that belongs to no change; a failure is logged (the call it records is
    /// answered anyway) and returned.
    pub async fn record(&self, record: &AuditRecord) -> Result<()> {
        let outcome = self.insert(record).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, action = %record.action, record_id = %record.id, "audit record not stored");
        }
        outcome
    }

    async fn insert(&self, record: &AuditRecord) -> Result<()> {
        let row = Row::of(record)?;
        sqlx::query(
            "INSERT INTO audit_outbox (record_id, tenant_id, record) VALUES ($1, $2, $3) \
             ON CONFLICT (record_id) DO NOTHING",
        )
        .bind(row.id)
        .bind(&row.tenant)
        .bind(&row.record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs `change` (a command) with `success` pending: its append stores the record in the
    /// same statement as its events. If it appended nothing the record is stored on its own; if
    /// it failed, a `failed` record with the error as reason is stored instead.
    pub async fn change<T, E: std::fmt::Display>(
        &self,
        success: AuditRecord,
        change: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        let (outcome, left) = run_pending(success, change).await;
        match (&outcome, left) {
            // Committed with the events (or, with an error after the commit, still committed).
            (_, None) => {}
            // Nothing was appended (an idempotent repeat): the call is recorded on its own.
            (Ok(_), Some(record)) => {
                let _ = self.record(&record).await;
            }
            (Err(e), Some(mut failed)) => {
                failed.id = Uuid::now_v7();
                failed.result = AuditResult::Failed;
                failed.reason = Some(e.to_string());
                let _ = self.record(&failed).await;
            }
        }
        outcome
    }
}

/// Runs `fut` with `record` pending; returns its output and the record if no append took it.
pub async fn run_pending<F: Future>(record: AuditRecord, fut: F) -> (F::Output, Option<AuditRecord>) {
    let cell = Mutex::new(Some(record));
    PENDING
        .scope(cell, async move {
            let out = fut.await;
            let left = take_pending();
            (out, left)
        })
        .await
}
