//! cqrs-es' `PersistedEventRepository` on the `events` and `snapshots` tables.
//!
//! A command that appends events costs two round trips: one `SELECT` to load the aggregate and
//! one multi-row `INSERT … SELECT FROM UNNEST` that commits on its own (no BEGIN/COMMIT pair).
//! The primary key `(aggregate_type, aggregate_id, sequence)` turns a concurrent append at the
//! same sequence into `OptimisticLockError`, and because it is a single statement nothing of a
//! losing command is stored.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::metadata;

const SELECT_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata \
     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence";

const INSERT_EVENTS: &str = "INSERT INTO events \
     (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[])";

/// The Keel event repository. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventRepository {
    pool: PgPool,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn select<A: Aggregate>(&self, id: &str, after: i64) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(A::TYPE)
            .bind(id)
            .bind(after)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(row_to_event).collect()
    }
}

/// Columns of one `INSERT … UNNEST` call.
#[derive(Default)]
struct Columns {
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    agg_types: Vec<String>,
    agg_ids: Vec<String>,
    seqs: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

impl Columns {
    fn from_events(events: &[SerializedEvent]) -> Result<Self, PersistenceError> {
        let mut c = Columns::default();
        for e in events {
            let tenant = e
                .metadata
                .get(metadata::TENANT_ID)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| PersistenceError::UnknownError(Box::new(crate::Error::MissingMetadata("tenant_id"))))?;
            c.ids.push(Uuid::now_v7());
            c.tenants.push(tenant.to_owned());
            c.agg_types.push(e.aggregate_type.clone());
            c.agg_ids.push(e.aggregate_id.clone());
            c.seqs.push(i64::try_from(e.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?);
            c.types.push(e.event_type.clone());
            c.versions.push(e.event_version.clone());
            c.payloads.push(e.payload.clone());
            c.metadata.push(e.metadata.clone());
        }
        Ok(c)
    }

    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.ids)
            .bind(self.tenants)
            .bind(self.agg_types)
            .bind(self.agg_ids)
            .bind(self.seqs)
            .bind(self.types)
            .bind(self.versions)
            .bind(self.payloads)
            .bind(self.metadata)
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(last_sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        self.select::<A>(aggregate_id, after).await
    }

    async fn get_snapshot<A: Aggregate>(&self, aggregate_id: &str) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let row = sqlx::query(
            "SELECT last_sequence, current_snapshot, payload FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let last: i64 = row.try_get("last_sequence").map_err(db_error)?;
        let current: i64 = row.try_get("current_snapshot").map_err(db_error)?;
        Ok(Some(SerializedSnapshot {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: row.try_get("payload").map_err(db_error)?,
            current_sequence: usize::try_from(last).unwrap_or_default(),
            current_snapshot: usize::try_from(current).unwrap_or_default(),
        }))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let columns = Columns::from_events(events)?;
        let Some((aggregate_id, _double_applied, current_snapshot)) = snapshot_update else {
            if events.is_empty() {
                return Ok(());
            }
            columns.bind(sqlx::query(INSERT_EVENTS)).execute(&self.pool).await.map_err(db_error)?;
            return Ok(());
        };
        // Events and the snapshot commit together or not at all. cqrs-es 0.5 hands us an
        // aggregate on which the new events were applied twice (once by `EventSink::write`, once
        // by the snapshot update), so the snapshot is rebuilt here from the stored events instead.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if !events.is_empty() {
            columns.bind(sqlx::query(INSERT_EVENTS)).execute(&mut *tx).await.map_err(db_error)?;
        }
        let rows = sqlx::query("SELECT sequence, payload FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence")
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let mut state = A::default();
        let mut last_sequence = 0i64;
        for row in &rows {
            last_sequence = row.try_get("sequence").map_err(db_error)?;
            let payload: Value = row.try_get("payload").map_err(db_error)?;
            state.apply(serde_json::from_value(payload)?);
        }
        let aggregate = serde_json::to_value(&state)?;
        let to_i64 = |v: usize| i64::try_from(v).map_err(|e| PersistenceError::UnknownError(Box::new(e)));
        let updated = sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
             SET last_sequence = EXCLUDED.last_sequence, current_snapshot = EXCLUDED.current_snapshot, \
                 payload = EXCLUDED.payload, updated_at = now() \
             WHERE snapshots.current_snapshot = EXCLUDED.current_snapshot - 1",
        )
        .bind(A::TYPE)
        .bind(&aggregate_id)
        .bind(last_sequence)
        .bind(to_i64(current_snapshot)?)
        .bind(aggregate)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if updated.rows_affected() != 1 {
            return Err(PersistenceError::OptimisticLockError);
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata \
             FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
            A::TYPE,
            Some(aggregate_id.to_owned()),
        ))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata \
             FROM events WHERE aggregate_type = $1 ORDER BY tx_id, global_position",
            A::TYPE,
            None,
        ))
    }
}

impl EventRepository {
    fn stream(&self, sql: &'static str, aggregate_type: &'static str, id: Option<String>) -> ReplayStream {
        let (mut feed, stream) = ReplayStream::new(256);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut q = sqlx::query(sql).bind(aggregate_type);
            if let Some(id) = id {
                q = q.bind(id);
            }
            let mut rows = q.fetch(&pool);
            loop {
                let item = match rows.try_next().await {
                    Ok(Some(row)) => row_to_event(&row),
                    Ok(None) => break,
                    Err(e) => Err(db_error(e)),
                };
                let stop = item.is_err();
                if feed.push(item).await.is_err() || stop {
                    break;
                }
            }
        });
        stream
    }
}

fn row_to_event(row: &PgRow) -> Result<SerializedEvent, PersistenceError> {
    let sequence: i64 = row.try_get("sequence").map_err(db_error)?;
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type").map_err(db_error)?,
        aggregate_id: row.try_get("aggregate_id").map_err(db_error)?,
        sequence: usize::try_from(sequence).map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?,
        event_type: row.try_get("event_type").map_err(db_error)?,
        event_version: row.try_get("event_version").map_err(db_error)?,
        payload: row.try_get("payload").map_err(db_error)?,
        metadata: row.try_get("metadata").map_err(db_error)?,
    })
}

/// Unique violation on the primary key = someone else appended at this sequence first.
fn db_error(e: sqlx::Error) -> PersistenceError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
        && db.constraint() == Some("events_pkey")
    {
        return PersistenceError::OptimisticLockError;
    }
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(Box::new(e))
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => PersistenceError::DeserializationError(Box::new(e)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}
