//! What a rebuild compares: the streams' ends and retention, the rows carried over from the live
//! table, and the keys on which the two tables differ.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Diff, Rebuilds, SAMPLE};
use crate::error::{Error, Result};
use crate::indexer::{consumer_name, stream_of};
use crate::projection::Source;
use crate::store::ddl;

/// What the tables are compared on: everything a row says, not where it sits in the table.
pub(super) const CONTENT: &str = "tenant_id, ts, event_id, project_id, kind, actor, resource_type, resource_id, \
     trace_id, result, digest, details, source";

impl Rebuilds {
    /// Copies from the live table the rows of `source` older than the first message its stream
    /// still holds: their messages are gone, so the live table is their only record.
    pub(super) async fn carry_over(&self, source: Source, live: &str, target: &str) -> Result<i64> {
        ddl::check_name(live)?;
        ddl::check_name(target)?;
        let cutoff = self.retained_since(source).await?;
        let cols = "event_id, ts, tenant_id, project_id, kind, actor, resource_type, resource_id, trace_id, \
                    result, digest, details, stored, source";
        let done = sqlx::query(&format!(
            "INSERT INTO {target} ({cols}) SELECT {cols} FROM {live} WHERE source = $1 AND ts < $2 \
             ON CONFLICT (tenant_id, ts, event_id) DO NOTHING"
        ))
        .bind(source.as_str())
        .bind(cutoff)
        .execute(self.pool())
        .await?;
        tracing::info!(source = source.as_str(), %cutoff, rows = done.rows_affected(), "carried over from the live table");
        Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
    }

    /// The time of the oldest message `source`'s stream still holds (now when it holds none).
    pub(super) async fn retained_since(&self, source: Source) -> Result<DateTime<Utc>> {
        let bus = self.indexer.bus();
        let mut stream = bus
            .jetstream()
            .get_stream(bus.stream_name(stream_of(source)))
            .await
            .map_err(|e| Error::Internal(format!("stream: {e}")))?;
        let state = stream
            .info()
            .await
            .map_err(|e| Error::Internal(format!("stream info: {e}")))?
            .state
            .clone();
        if state.messages == 0 {
            return Ok(Utc::now());
        }
        let t = state.first_timestamp;
        Ok(DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_else(Utc::now))
    }

    /// Each stream's last sequence now.
    pub(super) async fn stream_ends(&self) -> Result<Vec<(Source, u64)>> {
        let bus = self.indexer.bus();
        let mut out = Vec::new();
        for source in [Source::Events, Source::Audit] {
            let mut stream = bus
                .jetstream()
                .get_stream(bus.stream_name(stream_of(source)))
                .await
                .map_err(|e| Error::Internal(format!("stream: {e}")))?;
            let last = stream
                .info()
                .await
                .map_err(|e| Error::Internal(format!("stream info: {e}")))?
                .state
                .last_sequence;
            out.push((source, last));
        }
        Ok(out)
    }

    /// Whether generation `generation`'s consumer of `source` has acked everything up to `last`.
    pub(super) async fn consumed_to(&self, source: Source, generation: i32, last: u64) -> Result<bool> {
        let bus = self.indexer.bus();
        let stream = bus
            .jetstream()
            .get_stream(bus.stream_name(stream_of(source)))
            .await
            .map_err(|e| Error::Internal(format!("stream: {e}")))?;
        let Ok(info) = stream.consumer_info(consumer_name(source, generation)).await else {
            return Ok(true); // no such consumer: nothing more will come from it
        };
        Ok(info.ack_floor.stream_sequence >= last || info.num_pending + info.num_ack_pending as u64 == 0)
    }

    /// Records the keys on which the two tables differ as pass `pass`; how many.
    pub(super) async fn record_diff(&self, job: Uuid, pass: i16, live: &str, target: &str) -> Result<i64> {
        ddl::check_name(live)?;
        ddl::check_name(target)?;
        let differs = CONTENT
            .split(", ")
            .map(|c| format!("o.{c} IS DISTINCT FROM n.{c}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let done = sqlx::query(&format!(
            "INSERT INTO rebuild_diffs (job_id, pass, kind, tenant_id, ts, event_id) \
             SELECT $1, $2, CASE WHEN n.event_id IS NULL THEN 'missing' WHEN o.event_id IS NULL THEN 'extra' ELSE 'changed' END, \
                    COALESCE(o.tenant_id, n.tenant_id), COALESCE(o.ts, n.ts), COALESCE(o.event_id, n.event_id) \
             FROM {live} o FULL JOIN {target} n \
               ON o.tenant_id = n.tenant_id AND o.ts = n.ts AND o.event_id = n.event_id \
             WHERE o.event_id IS NULL OR n.event_id IS NULL OR {differs} \
             ON CONFLICT DO NOTHING"
        ))
        .bind(job)
        .bind(pass)
        .execute(self.pool())
        .await?;
        Ok(i64::try_from(done.rows_affected()).unwrap_or(i64::MAX))
    }

    /// What differed in both pass 1 and pass 2.
    pub(super) async fn lasting_diff(&self, job: Uuid) -> Result<Diff> {
        sqlx::query(
            "DELETE FROM rebuild_diffs d WHERE job_id = $1 AND pass = 2 AND NOT EXISTS \
             (SELECT 1 FROM rebuild_diffs f WHERE f.job_id = $1 AND f.pass = 1 \
              AND (f.tenant_id, f.ts, f.event_id) = (d.tenant_id, d.ts, d.event_id))",
        )
        .bind(job)
        .execute(self.pool())
        .await?;
        self.pass_diff(job, 2).await
    }

    pub(super) async fn pass_diff(&self, job: Uuid, pass: i16) -> Result<Diff> {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM rebuild_diffs WHERE job_id = $1 AND pass = $2 GROUP BY kind",
        )
        .bind(job)
        .bind(pass)
        .fetch_all(self.pool())
        .await?;
        let mut diff = Diff::default();
        for (kind, n) in counts {
            match kind.as_str() {
                "missing" => diff.missing = n,
                "extra" => diff.extra = n,
                _ => diff.changed = n,
            }
        }
        diff.sample = sqlx::query_scalar(
            "SELECT COALESCE(jsonb_agg(jsonb_build_object('kind', kind, 'tenant_id', tenant_id, 'ts', ts, \
             'event_id', event_id)), '[]') FROM (SELECT * FROM rebuild_diffs WHERE job_id = $1 AND pass = $2 \
             ORDER BY ts, event_id LIMIT $3) s",
        )
        .bind(job)
        .bind(pass)
        .bind(SAMPLE)
        .fetch_one(self.pool())
        .await?;
        Ok(diff)
    }
}

pub(super) async fn count(pool: &sqlx::PgPool, table: &str) -> Result<i64> {
    ddl::check_name(table)?;
    Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await?)
}
