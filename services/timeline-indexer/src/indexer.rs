//! Runs the two projections of the live generation and rebuilds: replay both streams into a
//! fresh table with fresh consumers, pause the old generation once the new one has caught up,
//! compare row for row, swap.

use std::time::Duration;

use keel_bus::{Bus, StreamKind};
use keel_store::projection::{ProjectionConfig, ProjectionRunner};
use prometheus::IntCounterVec;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::projection::{Source, TimelineProjection};
use crate::store::{Live, TimelineStore, ddl};

/// One generation's two runners.
pub struct Generation {
    pub generation: i32,
    pub events: ProjectionRunner<TimelineProjection>,
    pub audit: ProjectionRunner<TimelineProjection>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<keel_store::Result<()>>>,
}

impl Generation {
    pub async fn lag(&self) -> Result<u64> {
        Ok(self.events.lag().await? + self.audit.lag().await?)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub struct Indexer {
    pub store: TimelineStore,
    bus: Bus,
    shutdown: CancellationToken,
    malformed: IntCounterVec,
    current: tokio::sync::Mutex<Option<Generation>>,
}

fn config(stream: StreamKind, filter: &str) -> ProjectionConfig {
    let mut c = ProjectionConfig::new(stream);
    c.filter_subject = filter.to_owned();
    c.batch_size = 1000;
    c
}

impl Indexer {
    pub fn new(
        store: TimelineStore,
        bus: Bus,
        shutdown: CancellationToken,
        malformed: IntCounterVec,
    ) -> Self {
        Self {
            store,
            bus,
            shutdown,
            malformed,
            current: tokio::sync::Mutex::new(None),
        }
    }

    fn spawn(&self, generation: i32, table: Live) -> Generation {
        let stop = self.shutdown.child_token();
        let make = |source: Source, stream: StreamKind, filter: &str| {
            ProjectionRunner::new(
                self.store.pool.clone(),
                self.bus.clone(),
                TimelineProjection::new(source, generation, table.clone(), self.malformed.clone()),
                config(stream, filter),
            )
        };
        let events = make(Source::Events, StreamKind::Events, "keel.evt.>");
        let audit = make(Source::Audit, StreamKind::Audit, "keel.audit.>");
        let tasks = vec![
            events.clone().spawn(stop.clone()),
            audit.clone().spawn(stop.clone()),
        ];
        Generation {
            generation,
            events,
            audit,
            stop,
            tasks,
        }
    }

    /// Starts the live generation's projections.
    pub async fn start(&self) {
        let (_, generation) = self.store.live.get();
        let g = self.spawn(generation, self.store.live.clone());
        *self.current.lock().await = Some(g);
    }

    /// Messages the live projections have not applied yet.
    pub async fn lag(&self) -> Result<u64> {
        match self.current.lock().await.as_ref() {
            Some(g) => g.lag().await,
            None => Ok(0),
        }
    }

    /// Whether both live consumers (events, audit) are running.
    pub async fn alive(&self) -> bool {
        self.current
            .lock()
            .await
            .as_ref()
            .is_some_and(|g| g.tasks.iter().all(|t| !t.is_finished()))
    }

    pub async fn stop(&self) {
        if let Some(g) = self.current.lock().await.take() {
            g.stop().await;
        }
    }

    /// Replays both streams into a fresh table and swaps it in. Returns (rows, identical).
    pub async fn rebuild(&self) -> Result<(u64, bool)> {
        let mut current = self.current.lock().await;
        let (old_table, old_gen) = self.store.live.get();
        let new_gen = old_gen + 1;
        let new_table = format!("timeline_events_g{new_gen}");
        let mut conn = self.store.pool.acquire().await?;
        sqlx::query(&format!("DROP TABLE IF EXISTS {new_table}"))
            .execute(&mut *conn)
            .await?;
        ddl::create_table(&mut conn, &new_table).await?;
        let target = Live::fixed(new_table.clone(), new_gen);
        let next = self.spawn(new_gen, target);
        wait_caught_up(&next).await?;
        // Pause the old generation, let the new one take the last messages, then compare.
        if let Some(old) = current.take() {
            old.stop().await;
        }
        wait_caught_up(&next).await?;
        let identical = same_rows(&mut conn, &old_table, &new_table).await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {new_table}"))
            .fetch_one(&mut *conn)
            .await?;
        let mut tx = self.store.pool.begin().await?;
        sqlx::query("UPDATE timeline_state SET live_table = $1, generation = $2 WHERE id = 1")
            .bind(&new_table)
            .bind(new_gen)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.store.live.set(new_table.clone(), new_gen);
        // The new runners write through a fixed name; from now on they follow the live pointer.
        next.stop().await;
        *current = Some(self.spawn(new_gen, self.store.live.clone()));
        sqlx::query(&format!("DROP TABLE IF EXISTS {old_table}"))
            .execute(&mut *conn)
            .await?;
        for source in ["events", "audit"] {
            let stream = if source == "events" {
                StreamKind::Events
            } else {
                StreamKind::Audit
            };
            if let Ok(s) = self
                .bus
                .jetstream()
                .get_stream(self.bus.stream_name(stream))
                .await
            {
                let _ = s.delete_consumer(&format!("timeline-{source}-g{old_gen}")).await;
            }
        }
        Ok((u64::try_from(rows).unwrap_or_default(), identical))
    }
}

async fn wait_caught_up(g: &Generation) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        if g.lag().await? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Internal(
                "rebuild did not catch up within 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Row for row: the same (event_id, digest, kind, ts, tenant) in both tables.
async fn same_rows(conn: &mut sqlx::PgConnection, a: &str, b: &str) -> Result<bool> {
    ddl::check_name(a)?;
    ddl::check_name(b)?;
    let cols = "tenant_id, ts, event_id, digest, kind, actor, resource_type, resource_id, trace_id, result";
    let differ: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS ((SELECT {cols} FROM {a} EXCEPT SELECT {cols} FROM {b}) UNION ALL (SELECT {cols} FROM {b} EXCEPT SELECT {cols} FROM {a}))"
    ))
    .fetch_one(conn)
    .await?;
    Ok(!differ)
}
