//! The aggregator: closes hourly windows into usage records. For each window whose events
//! changed (a mark) and that closed more than the grace period ago, it computes the window's
//! value from the raw events and records it on the window's aggregate, which records nothing
//! when the value is the one already recorded. Then it clears the mark, unless an event arrived
//! meanwhile. Every step can be repeated: a crash anywhere, or two replicas on the same window
//! (the aggregate's optimistic concurrency lets one of them record), give the same records.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_store::{Framework, Metadata, Store};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::window::{Record, Window, window_id};
use crate::store::{self, Mark};

pub struct Aggregator {
    pub pool: PgPool,
    pub windows: Framework<Window>,
    /// How long after its end a window stays open to late events before it is first recorded.
    pub grace: chrono::Duration,
    pub every: Duration,
    /// Fault injection for the crash tests: exit (code 70) right after recording this many
    /// windows, before clearing the last one's mark (0: never).
    pub crash_after: u64,
    recorded: std::sync::atomic::AtomicU64,
}

impl Aggregator {
    pub fn new(store: &Store, grace: chrono::Duration, every: Duration, crash_after: u64) -> Self {
        Self {
            pool: store.pool().clone(),
            windows: store.framework(()),
            grace,
            every,
            crash_after,
            recorded: Default::default(),
        }
    }

    /// Records due windows until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            match self.pass().await {
                Ok(n) if n > 0 => tracing::debug!(windows = n, "usage windows recorded"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "aggregation pass failed; retrying"),
            }
        }
    }

    /// One pass over the due windows (at most 500); returns how many were handled.
    pub async fn pass(&self) -> anyhow::Result<usize> {
        let meters = store::meters(&self.pool).await?;
        let due = store::due_marks(&self.pool, Utc::now() - self.grace, 500).await?;
        let mut done = 0;
        for m in &due {
            let Some(def) = meters.get(&m.meter) else {
                tracing::warn!(meter = %m.meter, "window of an unknown meter left as it is");
                continue;
            };
            match self.record(m, def).await {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(tenant = %m.tenant_id, meter = %m.meter, error = %e, "window not recorded; it stays due")
                }
            }
        }
        Ok(done)
    }

    async fn record(&self, m: &Mark, def: &crate::domain::meter::MeterDef) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let (quantity, events) = store::window_value(&mut conn, m, def).await?;
        drop(conn);
        let id = window_id(&m.tenant_id, &m.meter, m.window_start, &m.group_key);
        let meta = Metadata::new(&m.tenant_id, "service:billing");
        self.windows
            .execute_with_metadata(
                &id,
                Record {
                    tenant_id: m.tenant_id.clone(),
                    meter: m.meter.clone(),
                    group_key: m.group_key.clone(),
                    window_start: m.window_start,
                    quantity,
                    events,
                    at: Utc::now(),
                },
                meta.into_map(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("window {id}: {e}"))?;
        let n = self.recorded.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if self.crash_after > 0 && n == self.crash_after {
            tracing::error!(
                windows = n,
                "injected crash between a window's record and its mark"
            );
            std::process::exit(70);
        }
        store::clear_mark(&self.pool, m).await?;
        Ok(())
    }
}
