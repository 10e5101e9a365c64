//! The relay's SQL: its lock, its checkpoint and the commit-order poll of `events`.

use sqlx::{PgConnection, Row};

use super::Cursor;
use crate::Result;
use crate::envelope::{STORED_EVENT_COLUMNS, StoredEvent};

/// The relay's session commits its checkpoints without waiting for the WAL flush. A checkpoint
/// lost in a PostgreSQL crash (the last few hundred milliseconds at most) only makes the relay
/// publish those events again, which JetStream's dedupe window drops; waiting for the flush
/// instead would delay every next poll by a disk sync.
pub(super) async fn async_checkpoints(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn try_lock(conn: &mut PgConnection, schema: &str, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
            .bind(format!("keel.relay.{schema}"))
            .bind(name)
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(super) async fn unlock(conn: &mut PgConnection, schema: &str, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
            .bind(format!("keel.relay.{schema}"))
            .bind(name)
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub async fn read_checkpoint(conn: &mut PgConnection, name: &str) -> Result<Cursor> {
    let row =
        sqlx::query("SELECT tx_id::text AS tx_id, global_position FROM relay_checkpoints WHERE relay = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else {
        return Ok(Cursor::default());
    };
    let tx: String = row.try_get("tx_id")?;
    Ok(Cursor {
        tx_id: tx
            .parse()
            .map_err(|_| sqlx::Error::Decode(format!("bad xid8 {tx:?}").into()))?,
        global_position: row.try_get("global_position")?,
    })
}

pub async fn save_checkpoint(conn: &mut PgConnection, name: &str, cursor: Cursor) -> Result<()> {
    sqlx::query(
        "INSERT INTO relay_checkpoints (relay, tx_id, global_position) VALUES ($1, $2::text::xid8, $3) \
         ON CONFLICT (relay) DO UPDATE SET tx_id = EXCLUDED.tx_id, global_position = EXCLUDED.global_position, updated_at = now()",
    )
    .bind(name)
    .bind(cursor.tx_id.to_string())
    .bind(cursor.global_position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The next committed events after `cursor`, in commit order, none of which can still be
/// preceded by a transaction that is running now.
pub async fn poll(conn: &mut PgConnection, cursor: Cursor, limit: i64) -> Result<Vec<StoredEvent>> {
    // `events.tx_id`, qualified: a bare `tx_id` in ORDER BY would name the output column
    // `tx_id::text AS tx_id`, sorting as text ('10' < '9': events skipped when xids gain a digit)
    // and sorting every row after the cursor before the LIMIT instead of walking the index.
    let sql = format!(
        "SELECT {STORED_EVENT_COLUMNS} FROM events \
         WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
           AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY events.tx_id, events.global_position LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(cursor.tx_id.to_string())
        .bind(cursor.global_position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// One row of `audit_outbox` as the audit relay reads it.
pub(crate) struct AuditRow {
    pub cursor: Cursor,
    pub record_id: uuid::Uuid,
    pub tenant_id: String,
    pub record: serde_json::Value,
}

/// As [`poll`], for the audit outbox.
pub(crate) async fn poll_audit(conn: &mut PgConnection, cursor: Cursor, limit: i64) -> Result<Vec<AuditRow>> {
    let rows = sqlx::query(
        "SELECT position, tx_id::text AS tx_text, record_id, tenant_id, record FROM audit_outbox \
         WHERE (tx_id, position) > ($1::text::xid8, $2) \
           AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY audit_outbox.tx_id, audit_outbox.position LIMIT $3",
    )
    .bind(cursor.tx_id.to_string())
    .bind(cursor.global_position)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let tx: String = row.try_get("tx_text")?;
            Ok(AuditRow {
                cursor: Cursor {
                    tx_id: tx
                        .parse()
                        .map_err(|_| sqlx::Error::Decode(format!("bad xid8 {tx:?}").into()))?,
                    global_position: row.try_get("position")?,
                },
                record_id: row.try_get("record_id")?,
                tenant_id: row.try_get("tenant_id")?,
                record: row.try_get("record")?,
            })
        })
        .collect()
}

/// Deletes audit rows relayed (at or before `checkpoint`) more than `keep` ago: the stream is
/// the record, the outbox only carries it there.
pub(crate) async fn prune_audit(
    conn: &mut PgConnection,
    checkpoint: Cursor,
    keep: std::time::Duration,
) -> Result<u64> {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
    let done = sqlx::query(
        "DELETE FROM audit_outbox WHERE (tx_id, position) <= ($1::text::xid8, $2) AND recorded_at < now() - $3::interval",
    )
    .bind(checkpoint.tx_id.to_string())
    .bind(checkpoint.global_position)
    .bind(keep)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Whether events past `cursor` exist that [`poll`] could not return yet: committed by a
/// transaction that is still below the oldest running one (`pg_snapshot_xmin` is cluster-wide,
/// so any open transaction holds them back), or written by one still running.
pub(super) async fn held_back(
    conn: &mut PgConnection,
    source: super::Source,
    cursor: Cursor,
) -> Result<bool> {
    let (table, position) = match source {
        super::Source::Events => ("events", "global_position"),
        super::Source::Audit => ("audit_outbox", "position"),
    };
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE (tx_id, {position}) > ($1::text::xid8, $2))"
    ))
    .bind(cursor.tx_id.to_string())
    .bind(cursor.global_position)
    .fetch_one(&mut *conn)
    .await?)
}
