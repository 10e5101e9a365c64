//! The outbox relay: carries committed events from `events` to JetStream in commit order.
//!
//! A `bigserial` position alone skips events: transaction A takes position 10, B takes 11 and
//! commits first; a reader that has seen 11 never goes back for 10. The relay therefore reads in
//! `(tx_id, global_position)` order and only below the oldest transaction still running
//! (`pg_snapshot_xmin`), so nothing can later appear behind its cursor. It publishes a batch with
//! `Nats-Msg-Id` = event id, awaits every ack, and only then stores its checkpoint: a crash in
//! between republishes, and JetStream's dedupe window drops the copies.
//!
//! One relay per service schema publishes at a time: each holds a session-level PostgreSQL
//! advisory lock on its own connection, and runs every query on that connection, so a relay
//! whose connection dies stops publishing at the moment it loses the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_bus::{Bus, Outgoing, headers};
use keel_events::subjects;
use sqlx::{Connection, PgConnection, Row};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::envelope::{STORED_EVENT_COLUMNS, StoredEvent};
use crate::{Result, Store};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Checkpoint name; one per relay of a schema.
    pub name: String,
    /// Events per poll (and per checkpoint), 1..=10_000.
    pub batch_size: i64,
    /// Pause after an empty poll.
    pub idle_poll: Duration,
    /// Pause between attempts to take the lock while another relay holds it.
    pub standby_poll: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "jetstream".to_owned(),
            batch_size: 1000,
            idle_poll: Duration::from_millis(5),
            standby_poll: Duration::from_millis(500),
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
            if try_lock(&mut conn, self.store.schema(), &self.config.name).await? {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.standby_poll) => {}
            }
        }
        self.stats.is_leader.store(true, Ordering::SeqCst);
        tracing::info!(relay = %self.config.name, schema = %self.store.schema(), "relay is leader");
        let result = self.relay_loop(&mut conn, shutdown).await;
        // Closing the connection releases the session lock even if the unlock fails.
        let _ = unlock(&mut conn, self.store.schema(), &self.config.name).await;
        let _ = conn.close().await;
        result
    }

    async fn relay_loop(&self, conn: &mut PgConnection, shutdown: &CancellationToken) -> Result<()> {
        let mut cursor = read_checkpoint(conn, &self.config.name).await?;
        self.stats
            .checkpoint_position
            .store(cursor.global_position, Ordering::Relaxed);
        while !shutdown.is_cancelled() {
            let batch = poll(conn, cursor, self.config.batch_size.clamp(1, 10_000)).await?;
            self.stats.polls.fetch_add(1, Ordering::SeqCst);
            let Some(last) = batch.last() else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.config.idle_poll) => {}
                }
                continue;
            };
            let next = Cursor {
                tx_id: last.tx_id,
                global_position: last.global_position,
            };
            self.publish(&batch).await?;
            save_checkpoint(conn, &self.config.name, next).await?;
            cursor = next;
            self.stats
                .checkpoint_position
                .store(cursor.global_position, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes a batch and waits for every ack. Events that cannot be enveloped go to the DLQ
    /// (with the reason) instead of stalling the relay for ever.
    pub async fn publish(&self, batch: &[StoredEvent]) -> Result<()> {
        let prefix = self.bus.subject_prefix();
        let mut acks = Vec::with_capacity(batch.len());
        for event in batch {
            let msg = match event.to_envelope(self.store.service()) {
                Ok(env) => Outgoing {
                    subject: subjects::event(&prefix, &env.tenantid, self.store.service(), &event.event_type),
                    payload: Bytes::from(env.to_json_bytes()),
                    msg_id: event.event_id.to_string(),
                    traceparent: env.traceparent.clone(),
                    headers: Vec::new(),
                },
                Err(e) => {
                    tracing::error!(event_id = %event.event_id, error = %e, "stored event cannot be enveloped; dead-lettering");
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    dead_letter(&prefix, event, &e.to_string())
                }
            };
            acks.push(self.bus.publish(msg).await?);
        }
        let results =
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
        for r in results {
            let ack = r.map_err(|e| keel_bus::Error::Publish {
                subject: "relay batch".into(),
                message: e.to_string(),
            })?;
            if ack.duplicate {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

fn dead_letter(prefix: &str, event: &StoredEvent, reason: &str) -> Outgoing {
    let tenant = if subjects::is_valid_token(&event.tenant_id) {
        event.tenant_id.as_str()
    } else {
        "unknown"
    };
    let body = serde_json::json!({
        "event_id": event.event_id, "tenant_id": event.tenant_id, "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id, "sequence": event.sequence, "event_type": event.event_type,
        "event_version": event.event_version, "payload": event.payload, "metadata": event.metadata,
    });
    Outgoing {
        subject: subjects::dlq(prefix, "relay", tenant),
        payload: Bytes::from(body.to_string()),
        msg_id: event.event_id.to_string(),
        traceparent: None,
        headers: vec![(
            headers::DLQ_REASON.to_owned(),
            reason.chars().take(1024).collect(),
        )],
    }
}

async fn try_lock(conn: &mut PgConnection, schema: &str, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
            .bind(format!("keel.relay.{schema}"))
            .bind(name)
            .fetch_one(&mut *conn)
            .await?,
    )
}

async fn unlock(conn: &mut PgConnection, schema: &str, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
            .bind(format!("keel.relay.{schema}"))
            .bind(name)
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub async fn read_checkpoint(conn: &mut PgConnection, name: &str) -> Result<Cursor> {
    let row =
        sqlx::query("SELECT tx_id::text AS tx_id, global_position FROM relay_checkpoints WHERE relay = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else {
        return Ok(Cursor::default());
    };
    let tx: String = row.try_get("tx_id")?;
    Ok(Cursor {
        tx_id: tx
            .parse()
            .map_err(|_| sqlx::Error::Decode(format!("bad xid8 {tx:?}").into()))?,
        global_position: row.try_get("global_position")?,
    })
}

pub async fn save_checkpoint(conn: &mut PgConnection, name: &str, cursor: Cursor) -> Result<()> {
    sqlx::query(
        "INSERT INTO relay_checkpoints (relay, tx_id, global_position) VALUES ($1, $2::text::xid8, $3) \
         ON CONFLICT (relay) DO UPDATE SET tx_id = EXCLUDED.tx_id, global_position = EXCLUDED.global_position, updated_at = now()",
    )
    .bind(name)
    .bind(cursor.tx_id.to_string())
    .bind(cursor.global_position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The next committed events after `cursor`, in commit order, none of which can still be
/// preceded by a transaction that is running now.
pub async fn poll(conn: &mut PgConnection, cursor: Cursor, limit: i64) -> Result<Vec<StoredEvent>> {
    let sql = format!(
        "SELECT {STORED_EVENT_COLUMNS} FROM events \
         WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
           AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY tx_id, global_position LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(cursor.tx_id.to_string())
        .bind(cursor.global_position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}
