//! cqrs-es' `PersistedEventRepository` on the `events` and `snapshots` tables.
//!
//! A command that appends events costs two round trips: one `SELECT` to load the aggregate and
//! one multi-row `INSERT … SELECT FROM UNNEST` that commits on its own (no BEGIN/COMMIT pair).
//! The primary key `(aggregate_type, aggregate_id, sequence)` turns a concurrent append at the
//! same sequence into `OptimisticLockError`, and because it is a single statement nothing of a
//! losing command is stored.
//!
//! Under load, concurrent commands share those round trips: loads and appends are grouped by
//! [`crate::batch`] (group commit), each caller still getting exactly its own outcome.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use std::sync::Arc;

use futures::TryStreamExt;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use crate::batch::append::{Append, Columns};
use crate::batch::load::Load;
use crate::batch::{Dispatcher, Limits};

/// How concurrent calls share statements (group commit). The defaults suit a pool of a few to a
/// few dozen connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommit {
    /// Append statements running at once; callers beyond them wait for the next free one and
    /// share it. Fewer means larger groups (fewer commits) but less overlap.
    pub appends_in_flight: usize,
    /// Most events in one append statement (a single larger command still runs, alone).
    pub max_events: usize,
    /// Load statements running at once.
    pub loads_in_flight: usize,
    /// Most aggregates in one load statement.
    pub max_loads: usize,
    /// Calls of each kind waiting for a statement at most; beyond, a call fails at once as
    /// overloaded (retryable) rather than queueing without bound.
    pub max_queued: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        Self {
            appends_in_flight: 2,
            max_events: 512,
            loads_in_flight: 2,
            max_loads: 256,
            max_queued: 10_000,
        }
    }
}

/// The Keel event repository. Cheap to clone; clones share their group-commit queues.
#[derive(Clone, Debug)]
pub struct EventRepository {
    pool: PgPool,
    appends: Arc<Dispatcher<Append>>,
    loads: Arc<Dispatcher<Load>>,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self::with_group_commit(pool, GroupCommit::default())
    }

    pub fn with_group_commit(pool: PgPool, config: GroupCommit) -> Self {
        let appends = Limits {
            in_flight: config.appends_in_flight,
            max_weight: config.max_events,
            max_queued: config.max_queued,
        };
        let loads = Limits {
            in_flight: config.loads_in_flight,
            max_weight: config.max_loads,
            max_queued: config.max_queued,
        };
        Self {
            appends: Arc::new(Dispatcher::new(pool.clone(), appends)),
            loads: Arc::new(Dispatcher::new(pool.clone(), loads)),
            pool,
        }
    }

    async fn select<A: Aggregate>(
        &self,
        id: &str,
        after: i64,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.loads
            .call(Load {
                aggregate_type: A::TYPE,
                aggregate_id: id.to_owned(),
                after,
            })
            .await
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
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

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
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
        // The audit record of the command being run, if any (see `crate::audit`): stored with
        // its events, in the same statement.
        let audit = match crate::audit::pending() {
            Some(record) if !events.is_empty() => Some(
                crate::audit::Row::of(&record).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
            ),
            _ => None,
        };
        let columns = Columns::from_events(events)?.with_audit(audit);
        let Some((aggregate_id, _double_applied, current_snapshot)) = snapshot_update else {
            if events.is_empty() {
                return Ok(());
            }
            self.appends.call(Append(columns)).await?;
            crate::audit::committed();
            return Ok(());
        };
        // Events and the snapshot commit together or not at all. cqrs-es 0.5 hands us an
        // aggregate on which the new events were applied twice (once by `EventSink::write`, once
        // by the snapshot update), so the snapshot is rebuilt here from the stored events instead.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if !events.is_empty() {
            columns
                .insert(&mut *tx, 0..columns.len())
                .await
                .map_err(db_error)?;
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
        if !events.is_empty() {
            crate::audit::committed();
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
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

pub(crate) fn row_to_event(row: &PgRow) -> Result<SerializedEvent, PersistenceError> {
    let sequence: i64 = row.try_get("sequence").map_err(db_error)?;
    Ok(SerializedEvent {
        aggregate_type: row.try_get("aggregate_type").map_err(db_error)?,
        aggregate_id: row.try_get("aggregate_id").map_err(db_error)?,
        sequence: usize::try_from(sequence)
            .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?,
        event_type: row.try_get("event_type").map_err(db_error)?,
        event_version: row.try_get("event_version").map_err(db_error)?,
        payload: row.try_get("payload").map_err(db_error)?,
        metadata: row.try_get("metadata").map_err(db_error)?,
    })
}

/// Unique violation on the primary key = someone else appended at this sequence first.
pub(crate) fn db_error(e: sqlx::Error) -> PersistenceError {
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
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            PersistenceError::DeserializationError(Box::new(e))
        }
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}
