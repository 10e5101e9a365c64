//! Runs the two projections (events, audit) of the live generation, follows the generation the
//! database names live (a rebuild on any replica swaps it), and runs a rebuild's projections
//! into its own table ([`Indexer::spawn_target`], driven by [`crate::rebuild`]).

use std::time::Duration;

use keel_bus::{Bus, StreamKind};
use keel_store::projection::{ProjectionConfig, ProjectionRunner};
use prometheus::IntCounterVec;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::projection::{Source, TimelineProjection};
use crate::store::{Live, TimelineStore};

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

    /// Messages applied by both runners since they started.
    pub fn applied(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.events.stats().applied.load(Relaxed) + self.audit.stats().applied.load(Relaxed)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The durable consumer of `source` in `generation`.
pub fn consumer_name(source: Source, generation: i32) -> String {
    format!("timeline-{}-g{generation}", source.as_str())
}

/// The stream each source is read from.
pub fn stream_of(source: Source) -> StreamKind {
    match source {
        Source::Events => StreamKind::Events,
        Source::Audit => StreamKind::Audit,
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

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    fn spawn(&self, generation: i32, table: Live, stop: CancellationToken) -> Generation {
        let make = |source: Source, filter: &str| {
            ProjectionRunner::new(
                self.store.pool.clone(),
                self.bus.clone(),
                TimelineProjection::new(source, generation, table.clone(), self.malformed.clone()),
                config(stream_of(source), filter),
            )
        };
        let events = make(Source::Events, "keel.evt.>");
        let audit = make(Source::Audit, "keel.audit.>");
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

    /// A rebuild's runners: generation `generation`'s consumers writing into `table` whatever
    /// is live, until `stop` (or the service's shutdown).
    pub fn spawn_target(&self, generation: i32, table: String, stop: &CancellationToken) -> Generation {
        let stop = stop.child_token();
        let shutdown = self.shutdown.clone();
        let linked = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => linked.cancel(),
                () = linked.cancelled() => {}
            }
        });
        self.spawn(generation, Live::fixed(table, generation), stop)
    }

    /// Starts the live generation's projections.
    pub async fn start(&self) {
        let (_, generation) = self.store.live.get();
        let g = self.spawn(generation, self.store.live.clone(), self.shutdown.child_token());
        *self.current.lock().await = Some(g);
    }

    /// Switches to the stored live generation if it moved (a swap here or on another replica):
    /// reads and writes go to its table, its consumers take over. Whether it moved.
    pub async fn follow(&self) -> Result<bool> {
        let mut current = self.current.lock().await;
        if !self.store.follow().await? {
            return Ok(false);
        }
        if let Some(old) = current.take() {
            old.stop().await;
        }
        let (_, generation) = self.store.live.get();
        *current = Some(self.spawn(generation, self.store.live.clone(), self.shutdown.child_token()));
        Ok(true)
    }

    /// Follows the stored live generation every `every` until shutdown.
    pub async fn follow_until_shutdown(&self, every: Duration) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = self.follow().await {
                tracing::warn!(error = %e, "could not read the live generation");
            }
        }
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
}
