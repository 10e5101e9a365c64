//! Reads, each in a transaction that takes the reader role and sets `keel.tenant_id`, so
//! row-level security filters every row whatever the query says.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;

use super::generations::TailPlan;
use super::{TimelineStore, ddl};
use crate::domain::{Filter, TimeRange};
use crate::error::Result;

/// A row as read back, with its tail position.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    pub event_id: Uuid,
    pub ts: DateTime<Utc>,
    pub tenant_id: String,
    pub project_id: String,
    pub kind: String,
    pub actor: String,
    pub resource_type: String,
    pub resource_id: String,
    pub trace_id: String,
    pub result: String,
    pub digest: String,
    pub details: Value,
    pub stored: Value,
    pub source: String,
    pub tx_id: u64,
    pub seq: i64,
}

const COLUMNS: &str = "event_id, ts, tenant_id, project_id, kind, actor, resource_type, resource_id, trace_id, \
     result, digest, details, stored, source, tx_id::text AS tx_id, seq";

fn row(r: &PgRow) -> Result<StoredRow> {
    let tx: String = r.try_get("tx_id")?;
    Ok(StoredRow {
        event_id: r.try_get("event_id")?,
        ts: r.try_get("ts")?,
        tenant_id: r.try_get("tenant_id")?,
        project_id: r.try_get("project_id")?,
        kind: r.try_get("kind")?,
        actor: r.try_get("actor")?,
        resource_type: r.try_get("resource_type")?,
        resource_id: r.try_get("resource_id")?,
        trace_id: r.try_get("trace_id")?,
        result: r.try_get("result")?,
        digest: r.try_get("digest")?,
        details: r.try_get("details")?,
        stored: r.try_get("stored")?,
        source: r.try_get("source")?,
        tx_id: tx.parse().unwrap_or_default(),
        seq: r.try_get("seq")?,
    })
}

/// The producer's aggregate sequence of a row (0 for audit records), the second key of a trace;
/// numeric, since an envelope's sequence is a u64.
const TRACE_SEQUENCE: &str = "COALESCE((stored->>'sequence')::numeric, 0)";

/// Where a trace page ends: the (ts, sequence, event id) of its last row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceKey {
    pub ts: DateTime<Utc>,
    pub sequence: u64,
    pub event_id: Uuid,
}

impl TraceKey {
    /// The key of `row` in trace order.
    pub fn of(row: &StoredRow) -> Self {
        Self {
            ts: row.ts,
            sequence: row
                .stored
                .get("sequence")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            event_id: row.event_id,
        }
    }
}

/// Where a tail stands: after (tx_id, seq) of generation `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailCursor {
    pub generation: i32,
    pub tx_id: u64,
    pub seq: i64,
}

/// Opens a reader transaction for `tenant`.
pub async fn reader<'a>(store: &TimelineStore, tenant: &str) -> Result<Transaction<'a, Postgres>> {
    reader_on(&store.pool, tenant).await
}

/// [`reader`] on a given pool (the tails').
pub async fn reader_on<'a>(pool: &sqlx::PgPool, tenant: &str) -> Result<Transaction<'a, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL ROLE keel_timeline_reader")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config('keel.tenant_id', $1, true)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &Filter) {
    for group in &f.kind_groups {
        qb.push(" AND (");
        for (i, k) in group.iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push("kind LIKE ").push_bind(k.like());
        }
        qb.push(")");
    }
    let eq = |qb: &mut QueryBuilder<'_, Postgres>, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            qb.push(format!(" AND {col} = ")).push_bind(v.clone());
        }
    };
    eq(qb, "resource_type", &f.resource_type);
    eq(qb, "resource_id", &f.resource_id);
    eq(qb, "project_id", &f.project);
    eq(qb, "actor", &f.actor);
    eq(qb, "trace_id", &f.trace_id);
    eq(qb, "result", &f.result);
    if let Some(t) = &f.text {
        let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        qb.push(" AND details::text ILIKE ")
            .push_bind(format!("%{escaped}%"));
    }
}

impl TimelineStore {
    /// Newest first; `after` is the (ts, event_id) of the last row of the previous page.
    pub async fn query(
        &self,
        tenant: &str,
        range: TimeRange,
        filter: &Filter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<StoredRow>> {
        let (table, _) = self.live.get();
        ddl::check_name(&table)?;
        let mut tx = reader(self, tenant).await?;
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM {table} WHERE tenant_id = "));
        qb.push_bind(tenant.to_owned());
        qb.push(" AND ts >= ")
            .push_bind(range.from)
            .push(" AND ts <= ")
            .push_bind(range.to);
        if let Some((ts, id)) = after {
            qb.push(" AND (ts, event_id) < (")
                .push_bind(ts)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY ts DESC, event_id DESC LIMIT ")
            .push_bind(limit);
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(row).collect()
    }

    pub async fn get(&self, tenant: &str, event_id: Uuid) -> Result<Option<StoredRow>> {
        let (table, _) = self.live.get();
        ddl::check_name(&table)?;
        let mut tx = reader(self, tenant).await?;
        let r = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE tenant_id = $1 AND event_id = $2 LIMIT 1"
        ))
        .bind(tenant)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        r.as_ref().map(row).transpose()
    }

    /// One trace in causal order: time, then the producer's aggregate sequence, then the event
    /// id (stable across rebuilds, unlike `seq`); `after` is the [`TraceKey`] of the last row of
    /// the previous page.
    pub async fn trace(
        &self,
        tenant: &str,
        trace_id: &str,
        after: Option<TraceKey>,
        limit: i64,
    ) -> Result<Vec<StoredRow>> {
        let (table, _) = self.live.get();
        ddl::check_name(&table)?;
        let mut tx = reader(self, tenant).await?;
        let (ts, sequence, event_id) = match after {
            Some(k) => (Some(k.ts), k.sequence.to_string(), Some(k.event_id)),
            None => (None, "0".to_owned(), None),
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE tenant_id = $1 AND trace_id = $2 \
             AND ($3::timestamptz IS NULL OR (ts, {TRACE_SEQUENCE}, event_id) > ($3, $4::text::numeric, $5)) \
             ORDER BY ts, {TRACE_SEQUENCE}, event_id LIMIT $6"
        ))
        .bind(tenant)
        .bind(trace_id)
        .bind(ts)
        .bind(sequence)
        .bind(event_id)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(row).collect()
    }

    /// The position a tail "from now" starts after.
    /// Whether the tenant's timeline may no longer be tailed (suspended, or being deleted).
    pub async fn tenant_suspended(&self, tenant: &str) -> Result<bool> {
        self.suspended_on(&self.pool, tenant).await
    }

    /// [`TimelineStore::tenant_suspended`], asked by an open tail (on the tails' pool).
    pub async fn tail_tenant_suspended(&self, tenant: &str) -> Result<bool> {
        self.suspended_on(&self.tail_pool, tenant).await
    }

    async fn suspended_on(&self, pool: &sqlx::PgPool, tenant: &str) -> Result<bool> {
        let suspended: Option<bool> =
            sqlx::query_scalar("SELECT suspended FROM tenant_policies WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(pool)
                .await?;
        Ok(suspended.unwrap_or(false))
    }

    pub async fn tail_start(&self) -> Result<TailCursor> {
        let (table, generation) = self.live.get();
        ddl::check_name(&table)?;
        let r: Option<(String, i64)> = sqlx::query_as(&format!(
            "SELECT t.tx_id::text, t.seq FROM {table} t WHERE t.tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY t.tx_id DESC, t.seq DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match r {
            Some((tx, seq)) => TailCursor {
                generation,
                tx_id: tx.parse().unwrap_or_default(),
                seq,
            },
            None => TailCursor {
                generation,
                tx_id: 0,
                seq: 0,
            },
        })
    }

    /// Rows after `cursor` in commit order, only below the oldest running transaction, so a
    /// row committed later can never appear behind a cursor already handed out. A cursor of the
    /// generation a rebuild replaced reads the rest of the replaced (frozen) table, then moves
    /// to the live generation, skipping what it already delivered.
    pub async fn tail(
        &self,
        tenant: &str,
        filter: &Filter,
        cursor: TailCursor,
        limit: i64,
    ) -> Result<TailPage> {
        let (table, generation, bridge, next) = match self.tail_plan(cursor).await? {
            TailPlan::Live {
                table,
                generation,
                bridge,
            } => (table, generation, bridge, None),
            TailPlan::Replaced {
                table,
                live_generation,
            } => (table, cursor.generation, None, Some(live_generation)),
        };
        ddl::check_name(&table)?;
        let mut tx = reader_on(&self.tail_pool, tenant).await?;
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM {table} WHERE tenant_id = "));
        qb.push_bind(tenant.to_owned());
        qb.push(" AND (tx_id, seq) > (")
            .push_bind(cursor.tx_id.to_string())
            .push("::text::xid8, ")
            .push_bind(cursor.seq)
            .push(")");
        qb.push(" AND tx_id < pg_snapshot_xmin(pg_current_snapshot())");
        if let Some((previous, at)) = &bridge {
            ddl::check_name(previous)?;
            qb.push(" AND ((tx_id, seq) > (")
                .push_bind(at.tx_id.to_string())
                .push("::text::xid8, ")
                .push_bind(at.seq)
                .push(format!(
                    ") OR NOT EXISTS (SELECT 1 FROM {previous} o WHERE o.tenant_id = {table}.tenant_id \
                     AND o.event_id = {table}.event_id))"
                ));
        }
        push_filter(&mut qb, filter);
        // Qualified: a bare `tx_id` would name the `tx_id::text` output column and sort as text.
        qb.push(format!(" ORDER BY {table}.tx_id, {table}.seq LIMIT "))
            .push_bind(limit);
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let rows = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
        // The replaced table is frozen: once it has nothing more, continue in the live one.
        let moved = next
            .filter(|_| (rows.len() as i64) < limit)
            .map(|generation| TailCursor {
                generation,
                tx_id: 0,
                seq: 0,
            });
        Ok(TailPage {
            generation,
            rows,
            moved,
        })
    }
}

/// One page of a tail: rows of `generation` in commit order, and where to continue when the
/// tail moved to a newer generation.
#[derive(Debug)]
pub struct TailPage {
    pub generation: i32,
    pub rows: Vec<StoredRow>,
    pub moved: Option<TailCursor>,
}

/// Counts rows visible under RLS as `tenant` (tests and the rebuild's comparison).
pub async fn visible_count(conn: &mut PgConnection, table: &str) -> Result<i64> {
    ddl::check_name(table)?;
    Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await?)
}
