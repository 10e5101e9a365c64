//! The outbox relay: carries committed events from `events` to JetStream in commit order.
//!
//! A `bigserial` position alone skips events: transaction A takes position 10, B takes 11 and
//! commits first; a reader that has seen 11 never goes back for 10. The relay therefore reads in
//! `(tx_id, global_position)` order and only below the oldest transaction still running
//! (`pg_snapshot_xmin`), so nothing can later appear behind its cursor. It publishes each batch
//! with `Nats-Msg-Id` = event id and stores the checkpoint of a batch only once every ack of it
//! and of every batch before it has arrived: a crash in between republishes, and JetStream's
//! dedupe window drops the copies.
//!
//! Batches are pipelined: while JetStream stores batch N and its acks come back, the relay
//! already polls and publishes batch N+1 (up to [`RelayConfig::pipeline_depth`] batches in
//! flight), all on one NATS connection, so the stream receives them in commit order.
//!
//! The same relay carries the audit outbox ([`Source::Audit`], see [`crate::audit`]): a
//! second relay of the schema, with its own checkpoint and lock, on `audit_outbox`.
//!
//! One relay per service schema and source publishes at a time: each holds a session-level PostgreSQL
//! advisory lock on its own connection, and runs every query on that connection, so a relay
//! whose connection dies stops publishing at the moment it loses the lock.

mod ack_log;
mod message;
mod outbox;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use keel_bus::Bus;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use ack_log::AckLog;

use crate::wakeup::{Wakeup, outbox_channel};
pub use outbox::{poll, read_checkpoint, save_checkpoint};

use crate::envelope::StoredEvent;
use crate::{Result, Store};

/// How long relayed rows stay in `audit_outbox` (for inspection after an incident), and how
/// often an idle audit relay deletes older ones.
const AUDIT_OUTBOX_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What a relay carries to JetStream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `events`, as CloudEvents envelopes on `keel.evt.…` (KEEL_EVENTS).
    Events,
    /// `audit_outbox`, as audit records on `keel.audit.…` (KEEL_AUDIT).
    Audit,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Checkpoint name; one per relay of a schema.
    pub name: String,
    /// The table it relays.
    pub source: Source,
    /// Events per poll (and per checkpoint), 1..=10_000.
    pub batch_size: i64,
    /// Batches published whose acks the relay has not yet seen, 1..=4. With 2, the relay polls
    /// and publishes a batch while the previous one is being stored and acked. Keep
    /// `batch_size × pipeline_depth` well below the bus's `max_ack_inflight`, which every
    /// publisher of the bus shares.
    pub pipeline_depth: usize,
    /// Longest pause after an empty poll: the `events` trigger's NOTIFY (see
    /// [`crate::wakeup`]) ends it at once, so this only bounds how late the relay notices work
    /// a notification could not announce (a lost listener connection; events held back by
    /// another transaction that committed without appending).
    pub idle_poll: Duration,
    /// Pause after an empty poll while events past the cursor exist but are held back by an
    /// open transaction (whose end may notify no one): short, as the relay's polling was.
    pub held_back_poll: Duration,
    /// Pause between attempts to take the lock while another relay holds it.
    pub standby_poll: Duration,
    /// When set, the relay records when each event's JetStream ack reached it (diagnostics and
    /// benchmarks: commit → ack latency).
    pub ack_log: Option<Arc<AckLog>>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "jetstream".to_owned(),
            source: Source::Events,
            batch_size: 2000,
            pipeline_depth: 2,
            idle_poll: Duration::from_millis(250),
            held_back_poll: Duration::from_millis(5),
            standby_poll: Duration::from_millis(500),
            ack_log: None,
        }
    }
}

impl RelayConfig {
    /// The audit outbox's relay (checkpoint `audit`).
    pub fn audit() -> Self {
        Self {
            name: "audit".to_owned(),
            source: Source::Audit,
            ..Self::default()
        }
    }
}

/// Counters a relay keeps about itself (exported as metrics by the service).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    /// Publishes JetStream recognised as duplicates (after a crash before checkpoint).
    pub duplicates: AtomicU64,
    /// Stored events that could not be enveloped and went to KEEL_DLQ instead.
    pub dead_lettered: AtomicU64,
    pub is_leader: AtomicBool,
    /// Polls of the events table made while leading (each one empty or not).
    pub polls: AtomicU64,
    /// Times the relay found nothing to publish and nothing held back, and waited for a NOTIFY
    /// (or its idle fallback) instead of polling.
    pub idle_waits: AtomicU64,
    pub checkpoint_position: AtomicI64,
}

/// Where the relay has got to: everything at or before this point is acked by JetStream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx_id: u64,
    pub global_position: i64,
}

pub struct Relay {
    store: Store,
    bus: Bus,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

pub struct RelayHandle {
    task: JoinHandle<Result<()>>,
    stats: Arc<RelayStats>,
}

impl RelayHandle {
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Waits for the relay to stop (after its shutdown token fires).
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(crate::Error::Projection {
                projection: "relay".into(),
                message: e.to_string(),
            }),
        }
    }

    /// Stops the task at once, as a crash would (tests).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Relay {
    pub fn new(store: &Store, bus: Bus, config: RelayConfig) -> Self {
        Self {
            store: store.clone(),
            bus,
            config,
            stats: Arc::default(),
        }
    }

    /// Starts a relay with the default config; it stops when `shutdown` is cancelled.
    pub fn spawn(store: &Store, bus: Bus, shutdown: CancellationToken) -> RelayHandle {
        Self::new(store, bus, RelayConfig::default()).start(shutdown)
    }

    /// Starts the audit outbox's relay of `db`'s schema (see [`crate::audit`]).
    pub fn spawn_audit(db: &crate::Database, bus: Bus, shutdown: CancellationToken) -> RelayHandle {
        let store = Store::on(db, "audit");
        Self::new(&store, bus, RelayConfig::audit()).start(shutdown)
    }

    pub fn start(self, shutdown: CancellationToken) -> RelayHandle {
        let stats = self.stats.clone();
        let task = tokio::spawn(async move { self.run(shutdown).await });
        RelayHandle { task, stats }
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.stats.is_leader.store(false, Ordering::SeqCst);
                    tracing::warn!(relay = %self.config.name, error = %e, "relay interrupted; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.stats.is_leader.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Takes the lock (waiting in standby while another relay has it), then relays until shutdown.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<()> {
        // A connection of its own, outside the pool: if this task dies, dropping it closes the
        // session and PostgreSQL releases the lock (a pooled one would keep it alive).
        let mut conn = PgConnection::connect_with(self.store.connect_options()).await?;
        loop {
            if outbox::try_lock(&mut conn, self.store.schema(), &self.config.name).await? {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.standby_poll) => {}
            }
        }
        outbox::async_checkpoints(&mut conn).await?;
        self.stats.is_leader.store(true, Ordering::SeqCst);
        tracing::info!(relay = %self.config.name, schema = %self.store.schema(), "relay is leader");
        let result = self.relay_loop(&mut conn, shutdown).await;
        // Closing the connection releases the session lock even if the unlock fails.
        let _ = outbox::unlock(&mut conn, self.store.schema(), &self.config.name).await;
        let _ = conn.close().await;
        result
    }

    async fn relay_loop(&self, conn: &mut PgConnection, shutdown: &CancellationToken) -> Result<()> {
        let name = &self.config.name;
        let (limit, depth) = (
            self.config.batch_size.clamp(1, 10_000),
            self.config.pipeline_depth.clamp(1, 4),
        );
        let checkpoint = read_checkpoint(conn, name).await?;
        self.stats
            .checkpoint_position
            .store(checkpoint.global_position, Ordering::Relaxed);
        // Where the next poll starts: past the last batch published, acked or not.
        let mut polled = checkpoint;
        let mut in_flight: VecDeque<(Cursor, Sent)> = VecDeque::new();
        // What the last stored checkpoint covers, and when relayed audit rows were last pruned.
        let (mut acked, mut pruned) = (checkpoint, None::<Instant>);
        // Listening before the first poll: an append committed after it wakes the loop.
        let mut wakeup = Wakeup::listen(self.store.pool(), outbox_channel(self.store.schema())).await;
        while !shutdown.is_cancelled() {
            let batch = self.next_batch(conn, polled, limit).await?;
            self.stats.polls.fetch_add(1, Ordering::SeqCst);
            if let Some(last) = batch.last() {
                polled = last.cursor;
                in_flight.push_back((polled, self.send(batch).await?));
                if in_flight.len() < depth {
                    continue;
                }
            } else if in_flight.is_empty() {
                let pause = if outbox::held_back(conn, self.config.source, polled).await? {
                    self.config.held_back_poll
                } else {
                    self.stats.idle_waits.fetch_add(1, Ordering::SeqCst);
                    if self.config.source == Source::Audit
                        && pruned.is_none_or(|at| at.elapsed() >= AUDIT_PRUNE_EVERY)
                    {
                        outbox::prune_audit(conn, acked, AUDIT_OUTBOX_KEEP).await?;
                        pruned = Some(Instant::now());
                    }
                    self.config.idle_poll
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = wakeup.wait(pause) => {}
                }
                continue;
            }
            // The oldest batch: its acks, then its checkpoint, strictly in order.
            if let Some((cursor, sent)) = in_flight.pop_front() {
                self.settle(conn, cursor, sent).await?;
                acked = cursor;
            }
        }
        // Shutting down: what was published gets its checkpoint, so a successor does not resend it.
        while let Some((cursor, sent)) = in_flight.pop_front() {
            self.settle(conn, cursor, sent).await?;
        }
        Ok(())
    }

    /// Publishes a batch of events and waits for every ack. Events that cannot be enveloped go
    /// to the DLQ (with the reason) instead of stalling the relay for ever.
    pub async fn publish(&self, batch: &[StoredEvent]) -> Result<()> {
        let items = batch.iter().map(|e| self.event_item(e)).collect();
        self.send(items).await?.acked().await
    }

    /// The next batch of the relay's source after `cursor`, as messages.
    async fn next_batch(&self, conn: &mut PgConnection, cursor: Cursor, limit: i64) -> Result<Vec<Item>> {
        Ok(match self.config.source {
            Source::Events => poll(conn, cursor, limit)
                .await?
                .iter()
                .map(|e| self.event_item(e))
                .collect(),
            Source::Audit => {
                let prefix = self.bus.subject_prefix();
                outbox::poll_audit(conn, cursor, limit)
                    .await?
                    .into_iter()
                    .map(|row| {
                        let msg = message::audit_message(&prefix, &row).unwrap_or_else(|e| {
                            tracing::error!(record_id = %row.record_id, error = %e, "stored audit record cannot be published; dead-lettering");
                            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            message::audit_dead_letter(&prefix, &row, &e)
                        });
                        Item {
                            cursor: row.cursor,
                            id: row.record_id,
                            msg,
                        }
                    })
                    .collect()
            }
        })
    }

    fn event_item(&self, event: &StoredEvent) -> Item {
        let prefix = self.bus.subject_prefix();
        let msg = message::envelope_message(&prefix, self.store.service(), event).unwrap_or_else(|e| {
            tracing::error!(event_id = %event.event_id, error = %e, "stored event cannot be enveloped; dead-lettering");
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            message::dead_letter(&prefix, event, &e.to_string())
        });
        Item {
            cursor: Cursor {
                tx_id: event.tx_id,
                global_position: event.global_position,
            },
            id: event.event_id,
            msg,
        }
    }

    /// Publishes a batch; its acks are awaited (and counted) by a task of their own.
    async fn send(&self, batch: Vec<Item>) -> Result<Sent> {
        let mut acks = Vec::with_capacity(batch.len());
        for item in batch {
            acks.push((item.id, self.bus.publish(item.msg).await?));
        }
        let (stats, log) = (self.stats.clone(), self.config.ack_log.clone());
        Ok(Sent(tokio::spawn(await_acks(acks, stats, log))))
    }

    /// Waits for the acks of a batch, then stores its checkpoint.
    async fn settle(&self, conn: &mut PgConnection, cursor: Cursor, sent: Sent) -> Result<()> {
        sent.acked().await?;
        save_checkpoint(conn, &self.config.name, cursor).await?;
        self.stats
            .checkpoint_position
            .store(cursor.global_position, Ordering::Relaxed);
        Ok(())
    }
}

/// One row of the source as the message that carries it.
struct Item {
    cursor: Cursor,
    id: Uuid,
    msg: keel_bus::Outgoing,
}

/// The acks of one published batch, being awaited. Dropping it (the relay stopped) stops the wait.
struct Sent(JoinHandle<Result<()>>);

impl Sent {
    async fn acked(mut self) -> Result<()> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(keel_bus::Error::Publish {
                subject: "relay batch".into(),
                message: e.to_string(),
            }
            .into()),
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Awaits the acks in publish order; any failure fails the batch (it will be published again).
async fn await_acks(
    acks: Vec<(Uuid, PublishAckFuture)>,
    stats: Arc<RelayStats>,
    log: Option<Arc<AckLog>>,
) -> Result<()> {
    let mut times = Vec::with_capacity(if log.is_some() { acks.len() } else { 0 });
    for (id, ack) in acks {
        let ack = ack.await.map_err(|e| keel_bus::Error::Publish {
            subject: "relay batch".into(),
            message: e.to_string(),
        })?;
        if log.is_some() {
            times.push((id, Instant::now()));
        }
        if ack.duplicate {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(log) = log {
        log.record(times);
    }
    Ok(())
}
