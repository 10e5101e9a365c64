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
use crate::indexer::{Generation, Indexer};
use crate::projection::Source;
use crate::store::ddl;

mod compare;
mod swap;

use compare::count;

/// Differing keys reported in a job.
pub const SAMPLE: i64 = 20;
/// How long a difference may take to disappear (both sides catching up) before it counts.
const SETTLE: Duration = Duration::from_secs(60);
/// How long the live table may stay frozen while the new one takes its last rows.
const FREEZE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

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
        // The counts and the sample are the report; the keys themselves may be many.
        sqlx::query("DELETE FROM rebuild_diffs WHERE job_id = $1")
            .bind(job)
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
        // The work is dropped (its runners stopped by `own`) before the job is marked.
        let outcome = {
            let work = self.execute(job, &own);
            tokio::pin!(work);
            loop {
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
            }
        };
        own.cancel();
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
        // Caught up once both consumers have passed what the streams held when the replay
        // began (under steady traffic the lag itself is never zero for long).
        runners.lag().await?; // creates the consumers if they are new
        let begun = self.stream_ends().await?;
        for (source, last) in &begun {
            while !self.consumed_to(*source, job.generation, *last).await? {
                let applied = i64::try_from(runners.applied()).unwrap_or(i64::MAX);
                self.progress(job.id, "replaying", Some(applied), None).await?;
                tokio::time::sleep(POLL).await;
            }
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
}
