//! Rebuilds as jobs: a row in `rebuild_jobs` that any replica may run (one at a time, under a
//! lease), resumed after its caller went away or its process died, and that never loses a row.
//!
//! A job replays both streams into generation N+1's table with durable consumers of its own,
//! carries over from the live table every row older than what the streams still hold (the live
//! table is the only record left of those, legal-held rows included), compares the two tables
//! key by key, and swaps only when they are identical. Differences are reported (counts and a
//! bounded sample) and the live table stays. The swap freezes the live table (every writer takes
//! `timeline_state` FOR SHARE, the swap FOR UPDATE), waits until the new table holds every row of
//! the frozen one, then names the new table live in `timeline_state`, which every replica follows.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::indexer::{Generation, Indexer, consumer_name, stream_of};
use crate::projection::Source;
use crate::store::ddl;

/// Differing keys reported in a job.
pub const SAMPLE: i64 = 20;
/// How long a difference may take to disappear (both sides catching up) before it counts.
const SETTLE: Duration = Duration::from_secs(60);
/// How long the live table may stay frozen while the new one takes its last rows.
const FREEZE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

/// What the tables are compared on: everything a row says, not where it sits in the table.
const CONTENT: &str = "tenant_id, ts, event_id, project_id, kind, actor, resource_type, resource_id, \
     trace_id, result, digest, details, source";

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub generation: i32,
    /// running | swapped | different | failed
    pub state: String,
    pub phase: String,
    pub requested_by: String,
    pub attempts: i32,
    pub rows_rebuilt: i64,
    pub carried_over: i64,
    pub missing: i64,
    pub extra: i64,
    pub changed: i64,
    pub sample: Value,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB: &str = "id, generation, state, phase, requested_by, attempts, rows_rebuilt, carried_over, \
     missing, extra, changed, sample, error, created_at, updated_at, finished_at";

/// The rebuild jobs of this replica's installation, and this replica's worker.
pub struct Rebuilds {
    indexer: Arc<Indexer>,
    /// Who holds a lease: one id per process.
    replica: Uuid,
    lease: Duration,
    wake: Notify,
}

fn table_of(generation: i32) -> String {
    format!("timeline_events_g{generation}")
}

/// The difference counts of a comparison.
#[derive(Debug, Default)]
struct Diff {
    missing: i64,
    extra: i64,
    changed: i64,
    sample: Value,
}

impl Diff {
    fn total(&self) -> i64 {
        self.missing + self.extra + self.changed
    }
}

impl Rebuilds {
    pub fn new(indexer: Arc<Indexer>, lease: Duration) -> Self {
        Self {
            indexer,
            replica: Uuid::now_v7(),
            lease: lease.max(Duration::from_secs(1)),
            wake: Notify::new(),
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        &self.indexer.store.pool
    }

    /// The running job, or a new one for the next generation.
    pub async fn start(&self, requested_by: &str) -> Result<Job> {
        for _ in 0..3 {
            let created: Option<Job> = sqlx::query_as(&format!(
                "INSERT INTO rebuild_jobs (id, generation, requested_by) \
                 SELECT $1, 1 + greatest((SELECT generation FROM timeline_state WHERE id = 1), \
                                         (SELECT COALESCE(max(generation), 0) FROM rebuild_jobs)), $2 \
                 ON CONFLICT DO NOTHING RETURNING {JOB}"
            ))
            .bind(Uuid::now_v7())
            .bind(requested_by)
            .fetch_optional(self.pool())
            .await?;
            if let Some(job) = created {
                tracing::info!(job = %job.id, generation = job.generation, "rebuild requested");
                self.wake.notify_one();
                return Ok(job);
            }
            let running: Option<Job> =
                sqlx::query_as(&format!("SELECT {JOB} FROM rebuild_jobs WHERE state = 'running'"))
                    .fetch_optional(self.pool())
                    .await?;
            if let Some(job) = running {
                return Ok(job);
            }
        }
        Err(Error::Internal("could not start a rebuild".into()))
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Job>> {
        Ok(
            sqlx::query_as(&format!("SELECT {JOB} FROM rebuild_jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Claims a running job nobody holds (or whose holder's lease expired).
    async fn claim(&self) -> Result<Option<Job>> {
        Ok(sqlx::query_as(&format!(
            "UPDATE rebuild_jobs SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), \
             attempts = attempts + 1, updated_at = now() \
             WHERE state = 'running' AND (lease_until IS NULL OR lease_until < now()) RETURNING {JOB}"
        ))
        .bind(self.replica)
        .bind(self.lease.as_secs_f64())
        .fetch_optional(self.pool())
        .await?)
    }

    async fn renew(&self, job: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE rebuild_jobs SET lease_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job)
        .bind(self.replica)
        .bind(self.lease.as_secs_f64())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn progress(&self, job: Uuid, phase: &str, rows: Option<i64>, carried: Option<i64>) -> Result<()> {
        sqlx::query(
            "UPDATE rebuild_jobs SET phase = $3, rows_rebuilt = COALESCE($4, rows_rebuilt), \
             carried_over = COALESCE($5, carried_over), updated_at = now() WHERE id = $1 AND lease_owner = $2",
        )
        .bind(job)
        .bind(self.replica)
        .bind(phase)
        .bind(rows)
        .bind(carried)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn finish(&self, job: Uuid, state: &str, diff: &Diff, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE rebuild_jobs SET state = $3, phase = 'done', missing = $4, extra = $5, changed = $6, \
             sample = $7, error = $8, lease_owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(job)
        .bind(self.replica)
        .bind(state)
        .bind(diff.missing)
        .bind(diff.extra)
        .bind(diff.changed)
        .bind(&diff.sample)
        .bind(error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The worker: claims and runs jobs until `stop`. Every replica runs one; a job whose
    /// holder died is taken over once its lease expires.
    pub async fn work(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let every = (self.lease / 3).max(Duration::from_millis(200));
        loop {
            match self.claim().await {
                Ok(Some(job)) => {
                    tracing::info!(job = %job.id, generation = job.generation, attempt = job.attempts, "running rebuild");
                    self.run(&job, &stop).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not claim a rebuild"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Runs `job` while renewing its lease; stops (leaving it to a later claim) when the lease
    /// is lost or the service stops.
    async fn run(&self, job: &Job, stop: &CancellationToken) {
        let own = stop.child_token();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.tick().await;
        let work = self.execute(job, &own);
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                r = &mut work => break Some(r),
                () = stop.cancelled() => break None,
                _ = renew.tick() => match self.renew(job.id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job = %job.id, "rebuild lease lost");
                        break None;
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "could not renew the rebuild lease"),
                },
            }
        };
        own.cancel();
        drop(work);
        match outcome {
            Some(Ok(())) | None => {}
            Some(Err(e)) => {
                tracing::error!(job = %job.id, error = %e, "rebuild failed");
                let _ = self
                    .finish(job.id, "failed", &Diff::default(), &e.to_string())
                    .await;
            }
        }
    }

    async fn execute(&self, job: &Job, stop: &CancellationToken) -> Result<()> {
        let store = &self.indexer.store;
        let (live_table, live_gen) = store.stored_live().await?;
        if live_gen >= job.generation {
            return Err(Error::Internal(format!(
                "generation {} is already live",
                live_gen
            )));
        }
        let target = table_of(job.generation);
        self.progress(job.id, "preparing", None, None).await?;
        self.drop_retired(&live_table, live_gen, job.generation).await?;
        let mut conn = self.pool().acquire().await?;
        ddl::create_table(&mut conn, &target).await?;
        drop(conn);

        self.progress(job.id, "replaying", None, None).await?;
        let runners = self.indexer.spawn_target(job.generation, target.clone(), stop);
        let result = self
            .compare_and_swap(job, &runners, &live_table, live_gen, &target)
            .await;
        runners.stop().await;
        let diff = match result? {
            None => {
                tracing::info!(job = %job.id, generation = job.generation, "rebuild swapped in");
                // This replica follows at once; the others on their next look.
                self.indexer.follow().await?;
                return Ok(());
            }
            Some(diff) => diff,
        };
        tracing::warn!(job = %job.id, missing = diff.missing, extra = diff.extra, changed = diff.changed,
            "the rebuilt table differs from the live one; the live table stays");
        self.finish(job.id, "different", &diff, "").await
    }

    /// Replays, carries over, compares, swaps. `None` when swapped, else the differences.
    async fn compare_and_swap(
        &self,
        job: &Job,
        runners: &Generation,
        live: &str,
        live_gen: i32,
        target: &str,
    ) -> Result<Option<Diff>> {
        loop {
            let lag = runners.lag().await?;
            if lag == 0 {
                break;
            }
            self.progress(
                job.id,
                "replaying",
                Some(i64::try_from(runners.applied()).unwrap_or(i64::MAX)),
                None,
            )
            .await?;
            tokio::time::sleep(POLL).await;
        }

        self.progress(job.id, "carrying over", None, None).await?;
        let mut carried = 0i64;
        for source in [Source::Events, Source::Audit] {
            carried += self.carry_over(source, live, target).await?;
        }
        self.progress(
            job.id,
            "comparing",
            Some(count(self.pool(), target).await?),
            Some(carried),
        )
        .await?;

        // A key may differ only because one side has not taken the newest messages yet: what
        // still differs once both consumers have passed the stream's end as of the first
        // comparison differs for good.
        let marks = self.stream_ends().await?;
        sqlx::query("DELETE FROM rebuild_diffs WHERE job_id = $1")
            .bind(job.id)
            .execute(self.pool())
            .await?;
        if self.record_diff(job.id, 1, live, target).await? > 0 {
            let deadline = tokio::time::Instant::now() + SETTLE;
            for generation in [live_gen, job.generation] {
                for (source, last) in &marks {
                    while !self.consumed_to(*source, generation, *last).await?
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
            self.record_diff(job.id, 2, live, target).await?;
            let diff = self.lasting_diff(job.id).await?;
            if diff.total() > 0 {
                return Ok(Some(diff));
            }
        }

        self.progress(job.id, "swapping", None, None).await?;
        if self.swap(job, live, target).await? {
            return Ok(None);
        }
        // The frozen live table still had rows the new one would not take: report those.
        self.record_diff(job.id, 3, live, target).await?;
        let mut diff = self.pass_diff(job.id, 3).await?;
        if diff.total() == 0 {
            diff.missing = 1;
            diff.sample = json!([{"kind": "missing", "note": "the new table did not catch up while the live one was frozen"}]);
        }
        Ok(Some(diff))
    }

    /// Copies from the live table the rows of `source` older than the first message its stream
    /// still holds: their messages are gone, so the live table is their only record.
    async fn carry_over(&self, source: Source, live: &str, target: &str) -> Result<i64> {
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
    async fn retained_since(&self, source: Source) -> Result<DateTime<Utc>> {
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
    async fn stream_ends(&self) -> Result<Vec<(Source, u64)>> {
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
    async fn consumed_to(&self, source: Source, generation: i32, last: u64) -> Result<bool> {
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
    async fn record_diff(&self, job: Uuid, pass: i16, live: &str, target: &str) -> Result<i64> {
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
    async fn lasting_diff(&self, job: Uuid) -> Result<Diff> {
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

    async fn pass_diff(&self, job: Uuid, pass: i16) -> Result<Diff> {
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

    /// Freezes the live table, waits until the new one holds every row of it, and names the new
    /// one live, in one transaction with the job's end. Whether it swapped.
    async fn swap(&self, job: &Job, live: &str, target: &str) -> Result<bool> {
        let mut lock = self.pool().begin().await?;
        // Every live writer takes this row FOR SHARE before it writes: from here on the live
        // table is frozen, and stays so once this commits (it is no longer live).
        sqlx::query("SELECT 1 FROM timeline_state WHERE id = 1 FOR UPDATE")
            .execute(&mut *lock)
            .await?;
        let deadline = tokio::time::Instant::now() + FREEZE;
        let bridge = loop {
            if let Some(at) = self.contains(live, target).await? {
                break at;
            }
            if tokio::time::Instant::now() >= deadline {
                lock.rollback().await?;
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        };
        sqlx::query(
            "INSERT INTO timeline_generations (generation, live_table) \
             SELECT generation, live_table FROM timeline_state WHERE id = 1 ON CONFLICT (generation) DO NOTHING",
        )
        .execute(&mut *lock)
        .await?;
        sqlx::query("UPDATE timeline_state SET live_table = $1, generation = $2 WHERE id = 1")
            .bind(target)
            .bind(job.generation)
            .execute(&mut *lock)
            .await?;
        sqlx::query(
            "INSERT INTO timeline_generations (generation, live_table, previous_table, bridge_tx, bridge_seq) \
             VALUES ($1, $2, $3, $4::text::xid8, $5) ON CONFLICT (generation) DO UPDATE SET \
             live_table = EXCLUDED.live_table, previous_table = EXCLUDED.previous_table, \
             bridge_tx = EXCLUDED.bridge_tx, bridge_seq = EXCLUDED.bridge_seq, swapped_at = now()",
        )
        .bind(job.generation)
        .bind(target)
        .bind(live)
        .bind(bridge.0.to_string())
        .bind(bridge.1)
        .execute(&mut *lock)
        .await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {target}"))
            .fetch_one(&mut *lock)
            .await?;
        let ended = sqlx::query(
            "UPDATE rebuild_jobs SET state = 'swapped', phase = 'done', rows_rebuilt = $3, missing = 0, extra = 0, \
             changed = 0, sample = '[]', lease_owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(self.replica)
        .bind(rows)
        .execute(&mut *lock)
        .await?;
        if ended.rows_affected() != 1 {
            lock.rollback().await?;
            return Err(Error::Internal(
                "the rebuild's lease was lost before the swap".into(),
            ));
        }
        lock.commit().await?;
        Ok(true)
    }

    /// If every row of the (frozen) live table is in the new one as it is, the new table's last
    /// position in the same snapshot: tails of the old generation resume after it.
    async fn contains(&self, live: &str, target: &str) -> Result<Option<(u64, i64)>> {
        let mut snap = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *snap)
            .await?;
        let missing: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT {CONTENT} FROM {live} EXCEPT SELECT {CONTENT} FROM {target})"
        ))
        .fetch_one(&mut *snap)
        .await?;
        if missing {
            snap.rollback().await?;
            return Ok(None);
        }
        let at: Option<(String, i64)> = sqlx::query_as(&format!(
            "SELECT tx_id::text, seq FROM {target} ORDER BY tx_id DESC, seq DESC LIMIT 1"
        ))
        .fetch_optional(&mut *snap)
        .await?;
        snap.commit().await?;
        Ok(Some(
            at.map(|(tx, seq)| (tx.parse().unwrap_or_default(), seq))
                .unwrap_or((0, 0)),
        ))
    }

    /// Drops what earlier generations left: every timeline table but the live one and this
    /// job's (the replaced one was kept for resuming tails until now), and their consumers.
    async fn drop_retired(&self, live: &str, live_gen: i32, target_gen: i32) -> Result<()> {
        let target = table_of(target_gen);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind = 'p' AND c.relname ~ '^timeline_events_g[0-9]+$'",
        )
        .fetch_all(self.pool())
        .await?;
        for t in tables.iter().filter(|t| *t != live && **t != target) {
            ddl::check_name(t)?;
            sqlx::query("UPDATE timeline_generations SET previous_table = NULL WHERE previous_table = $1")
                .bind(t)
                .execute(self.pool())
                .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
                .execute(self.pool())
                .await?;
            tracing::info!(table = %t, "dropped a retired timeline table");
        }
        let bus = self.indexer.bus();
        for source in [Source::Events, Source::Audit] {
            let Ok(stream) = bus
                .jetstream()
                .get_stream(bus.stream_name(stream_of(source)))
                .await
            else {
                continue;
            };
            let last = live_gen.max(target_gen);
            for g in 1..last {
                if g != live_gen && g != target_gen {
                    let _ = stream.delete_consumer(&consumer_name(source, g)).await;
                }
            }
        }
        Ok(())
    }
}

async fn count(pool: &sqlx::PgPool, table: &str) -> Result<i64> {
    ddl::check_name(table)?;
    Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await?)
}
