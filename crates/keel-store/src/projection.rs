//! The projection runner: a durable JetStream pull consumer feeding a [`Projection`].
//!
//! Messages are taken in batches; each batch is applied in one PostgreSQL transaction, each
//! message under its own savepoint so one bad message cannot undo its neighbours. The batch is
//! acked only after the commit. A message whose apply fails transiently is nak'ed with
//! exponential backoff; one that is malformed, fails permanently, or has been delivered
//! `max_deliver` times goes to KEEL_DLQ with the reason in its headers and is acked, so it never
//! blocks what comes behind it. Delivery is at-least-once; projections make it exactly-once in
//! effect by writing idempotently (`ON CONFLICT (event_id) DO NOTHING`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use keel_bus::{Bus, Outgoing, StreamKind, headers};
use keel_events::{Envelope, subjects};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Error, Result};

pub mod order;
pub use order::Position;

/// Why applying one message failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Worth retrying later (database busy, a dependency down).
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time: dead-letter it now.
    #[error("{0}")]
    Permanent(String),
}

impl keel_runtime::Retryable for ApplyError {
    fn is_retryable(&self) -> bool {
        matches!(self, ApplyError::Transient(_))
    }
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // Class 22 (data exception) and 23 (integrity violation) do not heal by retrying.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
            {
                ApplyError::Permanent(e.to_string())
            }
            _ => ApplyError::Transient(e.to_string()),
        }
    }
}

/// A read model built from one stream.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// What one message decodes to (an [`Envelope`] for domain events).
    type Item: Send + Sync;
    /// The durable consumer name; also the DLQ kind. 1-64 of `[A-Za-z0-9_-]`.
    fn name(&self) -> &str;
    /// Decodes a message; an error dead-letters it at once with the error as reason.
    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Self::Item, String>;
    /// Where `item` stands in its aggregate's history, for a projection whose items must be
    /// applied in each aggregate's order (see [`order`]): duplicates are then skipped and items
    /// that arrive ahead of a gap wait for it. `None` (the default) applies items as they come.
    fn position(&self, _item: &Self::Item) -> Option<Position> {
        None
    }
    /// Applies one item inside the batch transaction. Must be idempotent.
    async fn apply(&self, conn: &mut PgConnection, item: &Self::Item) -> Result<(), ApplyError>;
    /// Applies a whole batch (the fast path: override it with one multi-row statement). If it
    /// fails, the runner falls back to [`Projection::apply`] per item to isolate the bad one.
    async fn apply_batch(&self, conn: &mut PgConnection, items: &[&Self::Item]) -> Result<(), ApplyError> {
        for item in items {
            self.apply(conn, item).await?;
        }
        Ok(())
    }
    /// Empties the projection's tables before a rebuild from the start of the stream.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError>;
}

/// The usual [`Projection::decode`]: a Keel CloudEvents envelope.
/// The envelope in `payload`, which must agree with the event `subject` it arrived on: the
/// subject's tenant, service and event are the envelope's `tenantid`, `source` and `type`.
/// Anyone who can publish could otherwise write into another tenant's history; a disagreeing
/// message is dead-lettered with the reason and never applied.
pub fn decode_envelope(subject: &str, payload: &[u8]) -> Result<Envelope, String> {
    let e = Envelope::parse(payload).map_err(|e| format!("malformed envelope: {e}"))?;
    let Some((tenant, service, event)) = keel_events::subjects::parse_event(subject) else {
        return Err(format!("provenance: {subject:?} is not an event subject"));
    };
    if (tenant, service, event) != (e.tenantid.as_str(), e.service(), e.event_name()) {
        return Err(format!(
            "provenance: subject names tenant {tenant:?}, service {service:?}, event {event:?}; \
             the envelope says tenant {:?}, service {:?}, event {:?}",
            e.tenantid,
            e.service(),
            e.event_name()
        ));
    }
    Ok(e)
}

#[derive(Clone, Debug)]
pub struct ProjectionConfig {
    pub stream: StreamKind,
    /// Subject filter without namespace prefix (`keel.evt.>`); empty = the whole stream.
    pub filter_subject: String,
    /// Messages per transaction, 1..=1000.
    pub batch_size: usize,
    /// Deliveries after which a failing message is dead-lettered.
    pub max_deliver: i64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub ack_wait: Duration,
    /// How long an item parked ahead of a gap in its aggregate waits for the gap to fill before
    /// the gap is declared lost (ordered projections only).
    pub gap_timeout: Duration,
}

impl ProjectionConfig {
    pub fn new(stream: StreamKind) -> Self {
        Self {
            stream,
            filter_subject: String::new(),
            batch_size: 256,
            max_deliver: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            ack_wait: Duration::from_secs(30),
            // Longer than a nak'ed message's whole redelivery schedule (max_deliver backoffs).
            gap_timeout: Duration::from_secs(120),
        }
    }
}

/// Counters about a running projection.
#[derive(Debug, Default)]
pub struct ProjectionStats {
    pub applied: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retried: AtomicU64,
    /// Items that arrived ahead of a gap in their aggregate and were parked.
    pub parked: AtomicU64,
    /// Redeliveries of items already applied, skipped by their position.
    pub duplicates: AtomicU64,
    /// Gaps declared lost after the gap timeout.
    pub gaps_skipped: AtomicU64,
}

pub struct ProjectionRunner<P: Projection> {
    pool: PgPool,
    bus: Bus,
    projection: Arc<P>,
    config: ProjectionConfig,
    stats: Arc<ProjectionStats>,
    /// Whether any item so far had a position (then parked items are swept for overdue gaps).
    ordered: Arc<std::sync::atomic::AtomicBool>,
}

impl<P: Projection> Clone for ProjectionRunner<P> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            bus: self.bus.clone(),
            projection: self.projection.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            ordered: self.ordered.clone(),
        }
    }
}

enum Outcome {
    Ack,
    Retry(Duration),
    DeadLetter(String),
}

impl<P: Projection> ProjectionRunner<P> {
    pub fn new(pool: PgPool, bus: Bus, projection: P, config: ProjectionConfig) -> Self {
        Self {
            pool,
            bus,
            projection: Arc::new(projection),
            config,
            stats: Arc::default(),
            ordered: Arc::default(),
        }
    }

    pub fn stats(&self) -> &Arc<ProjectionStats> {
        &self.stats
    }

    fn fail(&self, message: impl ToString) -> Error {
        Error::Projection {
            projection: self.projection.name().to_owned(),
            message: message.to_string(),
        }
    }

    /// Creates the durable consumer if it does not exist yet.
    pub async fn consumer(&self) -> Result<PullConsumer> {
        let stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(self.config.stream))
            .await
            .map_err(|e| self.fail(e))?;
        let filter = if self.config.filter_subject.is_empty() {
            String::new()
        } else {
            format!("{}{}", self.bus.subject_prefix(), self.config.filter_subject)
        };
        let config = pull::Config {
            durable_name: Some(self.projection.name().to_owned()),
            filter_subject: filter,
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: self.config.ack_wait,
            // The runner counts deliveries itself and dead-letters; the server must not give up first.
            max_deliver: -1,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(self.projection.name(), config)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Messages not yet acked by this projection (waiting plus in flight).
    pub async fn lag(&self) -> Result<u64> {
        let consumer = self.consumer().await?;
        let info = consumer.get_info().await.map_err(|e| self.fail(e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Forgets everything: empties the tables and deletes the consumer, so the next run replays
    /// the stream from its first message. Stop the runner first.
    pub async fn reset(&self) -> Result<()> {
        crate::migrate(&self.pool, order::migrator()).await?;
        let mut tx = self.pool.begin().await?;
        self.projection.reset(&mut tx).await.map_err(|e| self.fail(e))?;
        order::forget(&mut tx, self.projection.name()).await?;
        tx.commit().await?;
        let stream = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(self.config.stream))
            .await
            .map_err(|e| self.fail(e))?;
        let _ = stream.delete_consumer(self.projection.name()).await;
        Ok(())
    }

    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<Result<()>> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    /// Consumes until `shutdown`; reconnects after errors.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let reconnect = keel_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(projection = self.projection.name(), error = %e, "projection interrupted; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(reconnect.delay_random(attempt)) => {}
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        crate::migrate(&self.pool, order::migrator()).await?;
        let consumer = self.consumer().await?;
        let mut sweep = tokio::time::interval(
            (self.config.gap_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(15)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch_size = self.config.batch_size.clamp(1, 1000);
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch_size)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| self.fail(e))?;
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    if self.ordered.load(Ordering::Relaxed) {
                        self.sweep().await?;
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let Some(first) = first else {
                return Err(self.fail("message stream ended"));
            };
            let mut batch = vec![first.map_err(|e| self.fail(e))?];
            // Take whatever else is already here, without waiting. Outside tokio's cooperative
            // budget: inside it, a ready channel answers Pending after 128 polls and batches
            // would be capped at 128 whatever the batch size.
            while batch.len() < batch_size {
                match tokio::task::unconstrained(messages.next()).now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => return Err(self.fail(e)),
                    Some(None) | None => break,
                }
            }
            self.handle_batch(batch).await?;
        }
    }

    async fn handle_batch(&self, batch: Vec<async_nats::jetstream::Message>) -> Result<()> {
        let span = tracing::info_span!(
            "projection.batch",
            otel.name = %format!("{} batch", self.projection.name()),
            otel.kind = "consumer",
            "messaging.system" = "nats",
            "messaging.consumer.group.name" = %self.projection.name(),
            "messaging.batch.message_count" = batch.len(),
        );
        // One consumer span per message, child of the trace it carries, open while its batch is
        // applied; a dead-lettered message's span is an error.
        let prefix = self.bus.subject_prefix();
        let spans: Vec<Option<tracing::Span>> = batch
            .iter()
            .map(|m| message_span(m, self.projection.name(), &prefix))
            .collect();
        let outcome = self.apply_and_settle(batch, &spans).instrument(span).await;
        drop(spans);
        outcome
    }

    async fn apply_and_settle(
        &self,
        batch: Vec<async_nats::jetstream::Message>,
        spans: &[Option<tracing::Span>],
    ) -> Result<()> {
        let prefix = self.bus.subject_prefix();
        let decoded: Vec<Result<P::Item, String>> = batch
            .iter()
            .map(|m| self.projection.decode(m.subject.as_str(), &m.payload))
            .collect();
        let incoming: Vec<Incoming<'_, P::Item>> = batch
            .iter()
            .zip(&decoded)
            .map(|(m, d)| Incoming {
                item: d.as_ref().ok(),
                position: d.as_ref().ok().and_then(|item| self.projection.position(item)),
                delivered: m.info().map(|i| i.delivered).unwrap_or(1),
                subject: m.subject.as_str(),
                payload: &m.payload,
                tenant: tenant_of_subject(m.subject.as_str(), &prefix).unwrap_or("unknown"),
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let (mut outcomes, parked_dead) = self.apply_in_order(&mut tx, &incoming, &HashSet::new()).await?;
        for (o, d) in outcomes.iter_mut().zip(&decoded) {
            if let Err(reason) = d {
                *o = Outcome::DeadLetter(reason.clone());
            }
        }
        if let Err(e) = tx.commit().await {
            // Nothing of the batch is stored: let every message come back later.
            for msg in &batch {
                let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                let _ = msg.ack_with(AckKind::Nak(Some(self.backoff(delivered)))).await;
            }
            return Err(e.into());
        }
        self.dead_letter_parked(parked_dead).await?;
        for (index, (msg, outcome)) in batch.iter().zip(outcomes).enumerate() {
            match outcome {
                Outcome::Ack => {
                    self.stats.applied.fetch_add(1, Ordering::Relaxed);
                    msg.ack().await.map_err(|e| self.fail(e))?;
                }
                Outcome::Retry(delay) => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    msg.ack_with(AckKind::Nak(Some(delay)))
                        .await
                        .map_err(|e| self.fail(e))?;
                }
                Outcome::DeadLetter(reason) => {
                    if let Some(Some(span)) = spans.get(index) {
                        span.record("otel.status_code", "ERROR");
                    }
                    self.dead_letter(msg, &reason).await?;
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    msg.ack().await.map_err(|e| self.fail(e))?;
                }
            }
        }
        Ok(())
    }

    /// Applies the decoded `incoming` items in `tx`: unpositioned ones as they come, positioned
    /// ones in their aggregates' order with whatever parked items they unblock (and those of the
    /// `overdue` streams, whose gaps are declared lost). Returns each incoming item's outcome
    /// and the parked items that failed for good (to dead-letter once `tx` commits).
    async fn apply_in_order(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        incoming: &[Incoming<'_, P::Item>],
        overdue: &HashSet<String>,
    ) -> Result<(Vec<Outcome>, Vec<(order::Parked, String)>)> {
        let name = self.projection.name();
        let mut outcomes: Vec<Outcome> = incoming.iter().map(|_| Outcome::Ack).collect();
        let positions: Vec<Option<Position>> = incoming.iter().map(|i| i.position.clone()).collect();
        let mut streams: Vec<String> = positions.iter().flatten().map(|p| p.stream.clone()).collect();
        streams.extend(overdue.iter().cloned());
        streams.sort_unstable();
        streams.dedup();
        let (plan, parked) = if streams.is_empty() {
            (order::Plan::default(), Vec::new())
        } else {
            self.ordered.store(true, Ordering::Relaxed);
            let (applied, parked) = order::load(tx, name, &streams).await?;
            (order::plan(&applied, &positions, &parked, overdue), parked)
        };
        for (stream, last, first) in &plan.gaps {
            tracing::warn!(projection = name, %stream, last_applied = last, resumed_at = first,
                "gap in an aggregate's events waited past the gap timeout; applying what follows it");
            self.stats.gaps_skipped.fetch_add(1, Ordering::Relaxed);
        }
        // Parked items to apply, read again from their raw form.
        let revived: HashMap<usize, std::result::Result<P::Item, String>> = plan
            .ready
            .iter()
            .chain(&plan.detached)
            .filter_map(|(_, _, from)| match from {
                order::From::Parked(j) => Some(*j),
                order::From::Batch(_) => None,
            })
            .map(|j| (j, self.projection.decode(&parked[j].subject, &parked[j].payload)))
            .collect();
        // What to apply, in order: unpositioned items first (their order is free), then the plan.
        let mut list: Vec<Entry> = incoming
            .iter()
            .enumerate()
            .filter(|(_, i)| i.item.is_some() && i.position.is_none())
            .map(|(i, _)| Entry {
                stream: None,
                from: order::From::Batch(i),
                advance: false,
            })
            .collect();
        list.extend(plan.ready.iter().map(|(stream, seq, from)| Entry {
            stream: Some((stream.clone(), *seq)),
            from: *from,
            advance: true,
        }));
        list.extend(plan.detached.iter().map(|(stream, seq, from)| Entry {
            stream: Some((stream.clone(), *seq)),
            from: *from,
            advance: false,
        }));
        for (stream, seq, _) in &plan.detached {
            tracing::warn!(projection = name, %stream, seq,
                "event far ahead of its aggregate's position applied on its own; the position stays");
        }
        let item_of = |from: order::From| -> Option<&P::Item> {
            match from {
                order::From::Batch(i) => incoming[i].item,
                order::From::Parked(j) => revived.get(&j).and_then(|r| r.as_ref().ok()),
            }
        };
        let mut advanced: HashMap<String, i64> = HashMap::new();
        let mut unparked: Vec<(String, i64)> = plan.stale.clone();
        let mut park: Vec<usize> = plan
            .verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| **v == Some(order::Verdict::Park))
            .map(|(i, _)| i)
            .collect();
        let mut parked_dead: Vec<(order::Parked, String)> = Vec::new();
        let skipped = plan
            .verdicts
            .iter()
            .filter(|v| **v == Some(order::Verdict::Skip))
            .count();
        self.stats.duplicates.fetch_add(skipped as u64, Ordering::Relaxed);

        // Fast path: the whole list at once.
        let all: Vec<&P::Item> = list.iter().filter_map(|e| item_of(e.from)).collect();
        let mut sp = tx.begin().await?;
        let fast = if all.is_empty() {
            Ok(())
        } else {
            self.projection.apply_batch(&mut sp, &all).await
        };
        let slow = match fast {
            Ok(()) if all.len() == list.len() => {
                sp.commit().await?;
                for e in &list {
                    if let Some((stream, seq)) = &e.stream {
                        if e.advance {
                            advanced.insert(stream.clone(), *seq);
                        }
                        if matches!(e.from, order::From::Parked(_)) {
                            unparked.push((stream.clone(), *seq));
                        }
                    }
                }
                false
            }
            _ => {
                sp.rollback().await?;
                true
            }
        };
        if slow {
            // One savepoint per item, so one bad message cannot undo the rest; a stream stops at
            // its first item that must be retried (what follows it waits, parked).
            let mut blocked: HashSet<String> = HashSet::new();
            for e in &list {
                let stream = e.stream.as_ref();
                if let Some((s, _)) = stream
                    && blocked.contains(s)
                {
                    if let order::From::Batch(i) = e.from {
                        park.push(i);
                    }
                    continue;
                }
                let (delivered, item) = match e.from {
                    order::From::Batch(i) => (incoming[i].delivered, item_of(e.from).ok_or(i)),
                    order::From::Parked(j) => (1, item_of(e.from).ok_or(j)),
                };
                let outcome = match item {
                    Ok(item) => self.apply_one(tx, item, delivered).await?,
                    Err(j) => Outcome::DeadLetter(match revived.get(&j) {
                        Some(Err(reason)) => reason.clone(),
                        _ => "parked message cannot be read".to_owned(),
                    }),
                };
                let retry = matches!(outcome, Outcome::Retry(_));
                match (e.from, &outcome) {
                    (order::From::Parked(_), Outcome::Retry(_)) => {}
                    (order::From::Parked(j), Outcome::DeadLetter(reason)) => {
                        parked_dead.push((parked[j].clone(), reason.clone()));
                    }
                    _ => {}
                }
                if let Some((s, seq)) = stream {
                    if retry {
                        blocked.insert(s.clone());
                    } else {
                        if e.advance {
                            advanced.insert(s.clone(), *seq);
                        }
                        if matches!(e.from, order::From::Parked(_)) {
                            unparked.push((s.clone(), *seq));
                        }
                    }
                }
                if let order::From::Batch(i) = e.from {
                    outcomes[i] = outcome;
                }
            }
        }
        let to_park: Vec<order::ToPark<'_>> = park
            .iter()
            .filter_map(|&i| {
                let p = incoming[i].position.as_ref()?;
                Some(order::ToPark {
                    stream: &p.stream,
                    sequence: p.sequence,
                    tenant: incoming[i].tenant,
                    subject: incoming[i].subject,
                    payload: incoming[i].payload,
                })
            })
            .collect();
        self.stats
            .parked
            .fetch_add(to_park.len() as u64, Ordering::Relaxed);
        order::record(tx, name, &advanced, &unparked, &to_park).await?;
        Ok((outcomes, parked_dead))
    }

    /// Applies what waited past the gap timeout behind a gap in its aggregate.
    async fn sweep(&self) -> Result<()> {
        let overdue: HashSet<String> =
            order::overdue(&self.pool, self.projection.name(), self.config.gap_timeout, 100)
                .await?
                .into_iter()
                .collect();
        if overdue.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let (_, dead) = self.apply_in_order(&mut tx, &[], &overdue).await?;
        tx.commit().await?;
        self.dead_letter_parked(dead).await
    }

    async fn dead_letter_parked(&self, dead: Vec<(order::Parked, String)>) -> Result<()> {
        for (p, reason) in dead {
            let tenant = tenant_of_subject(&p.subject, &self.bus.subject_prefix())
                .unwrap_or("unknown")
                .to_owned();
            // "Stream" `parked:<aggregate>` and its sequence: dead-lettered once, whoever got there.
            let from = format!("parked:{}", p.stream);
            self.publish_dead_letter(&p.subject, &p.payload, &tenant, (&from, p.sequence, 1), &reason)
                .await?;
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn apply_one(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        item: &P::Item,
        delivered: i64,
    ) -> Result<Outcome> {
        let mut sp = tx.begin().await?;
        Ok(match self.projection.apply(&mut sp, item).await {
            Ok(()) => {
                sp.commit().await?;
                Outcome::Ack
            }
            Err(ApplyError::Permanent(reason)) => {
                sp.rollback().await?;
                Outcome::DeadLetter(reason)
            }
            Err(ApplyError::Transient(reason)) => {
                sp.rollback().await?;
                if delivered >= self.config.max_deliver {
                    Outcome::DeadLetter(format!("gave up after {delivered} deliveries: {reason}"))
                } else {
                    tracing::warn!(projection = self.projection.name(), delivered, %reason, "apply failed; will retry");
                    Outcome::Retry(self.backoff(delivered))
                }
            }
        })
    }

    fn backoff(&self, delivered: i64) -> Duration {
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        keel_runtime::Backoff::new(self.config.backoff_base, self.config.backoff_max).delay_random(attempt)
    }

    async fn dead_letter(&self, msg: &async_nats::jetstream::Message, reason: &str) -> Result<()> {
        let info = msg.info().ok();
        let (stream, seq, delivered) = info
            .as_ref()
            .map(|i| (i.stream.to_owned(), i.stream_sequence, i.delivered))
            .unwrap_or_default();
        let tenant = tenant_of_subject(msg.subject.as_str(), &self.bus.subject_prefix())
            .unwrap_or("unknown")
            .to_owned();
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.publish_dead_letter(
            msg.subject.as_str(),
            &msg.payload,
            &tenant,
            (&stream, seq, delivered),
            reason,
        )
        .await
    }

    /// Publishes a message to KEEL_DLQ with `reason`; `from` is (stream, sequence, deliveries).
    async fn publish_dead_letter(
        &self,
        subject: &str,
        payload: &[u8],
        tenant: &str,
        (stream, seq, delivered): (&str, i64, i64),
        reason: &str,
    ) -> Result<()> {
        tracing::error!(projection = self.projection.name(), %stream, seq, %reason, "dead-lettering message");
        let reason: String = reason.chars().take(1024).collect();
        let headers = vec![
            (headers::DLQ_REASON.to_owned(), reason.replace(['\r', '\n'], " ")),
            (headers::DLQ_STREAM.to_owned(), stream.to_owned()),
            (headers::DLQ_SEQUENCE.to_owned(), seq.to_string()),
            (headers::DLQ_SUBJECT.to_owned(), subject.to_owned()),
            (
                headers::DLQ_CONSUMER.to_owned(),
                self.projection.name().to_owned(),
            ),
            (headers::DLQ_DELIVERIES.to_owned(), delivered.to_string()),
        ];
        let msg_id = format!("{}:{stream}:{seq}", self.projection.name());
        self.bus
            .publish_acked(Outgoing {
                subject: subjects::dlq(&self.bus.subject_prefix(), self.projection.name(), tenant),
                payload: Bytes::copy_from_slice(payload),
                msg_id,
                traceparent: None,
                headers,
            })
            .await?;
        Ok(())
    }
}

/// One message of a batch, decoded (or not), with where it stands.
struct Incoming<'a, T> {
    item: Option<&'a T>,
    position: Option<Position>,
    delivered: i64,
    subject: &'a str,
    payload: &'a [u8],
    tenant: &'a str,
}

/// One entry to apply: from the batch or the parked rows, with its stream position if any.
struct Entry {
    stream: Option<(String, i64)>,
    from: order::From,
    /// Whether applying it moves its stream's position (not for a detached entry).
    advance: bool,
}

/// The consumer span of a message that carries a `traceparent` header (`messaging.*`).
fn message_span(msg: &async_nats::jetstream::Message, consumer: &str, prefix: &str) -> Option<tracing::Span> {
    let tp = msg
        .headers
        .as_ref()?
        .get(headers::TRACEPARENT)?
        .as_str()
        .to_owned();
    let span = tracing::info_span!(
        parent: None,
        "nats.process",
        otel.name = %format!("{consumer} process"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        "messaging.system" = "nats",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = %msg.subject,
        "messaging.consumer.group.name" = %consumer,
        tenant_id = tenant_of_subject(msg.subject.as_str(), prefix).unwrap_or(""),
    );
    keel_runtime::telemetry::set_parent_from_traceparent(&span, &tp);
    Some(span)
}

/// The tenant token of `<prefix>keel.<kind>.<tenant>.…`, if it is a valid token.
fn tenant_of_subject<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?;
    let mut parts = rest.split('.');
    let (_keel, _kind, tenant) = (parts.next()?, parts.next()?, parts.next()?);
    subjects::is_valid_token(tenant).then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_read_from_the_subject() {
        assert_eq!(
            tenant_of_subject("keel.evt.acme.tenant.TenantCreated", ""),
            Some("acme")
        );
        assert_eq!(
            tenant_of_subject("t1.keel.audit.acme.tenant.create", "t1."),
            Some("acme")
        );
        assert_eq!(tenant_of_subject("keel.evt", ""), None);
    }
}
