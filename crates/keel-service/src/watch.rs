//! Readiness and metrics that tell the truth about the service's relays and consumers (see
//! `keel_store::watch`): every few seconds each is looked at from outside, its figures exported,
//! and a stall (work waiting, no progress for `KEEL_READY_STALL_SECS`) makes `/readyz` fail
//! naming it until it moves again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_bus::{Bus, StreamKind};
use keel_runtime::Metrics;
use keel_store::relay::Source;
use keel_store::watch::{Stall, backlog};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Why the watched worker is not ready (`None`: it is).
pub(crate) type Verdict = Arc<Mutex<Option<String>>>;

fn every(limit: Duration) -> Duration {
    (limit / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Watches relay `name` of `source` in `pool`'s schema.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay(
    pool: PgPool,
    source: Source,
    name: String,
    metrics: Metrics,
    limit: Duration,
    verdict: Verdict,
    shutdown: CancellationToken,
) {
    let lag = metrics.relay_lag_seconds().with_label_values(&[&name]);
    let depth = metrics
        .queue_depth()
        .with_label_values(&[&format!("outbox.{name}")]);
    let mut tick = tokio::time::interval(every(limit));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = match backlog(&pool, source, &name).await {
            Ok(b) => {
                lag.set(b.oldest_secs);
                depth.set(b.rows);
                b.stalled(limit).then(|| {
                    format!(
                        "relay {name} stalled: {} rows waiting, the oldest for {:.0} s",
                        b.rows, b.oldest_secs
                    )
                })
            }
            // The database check reports an unreachable database on its own.
            Err(e) => {
                tracing::debug!(relay = %name, error = %e, "relay backlog unknown");
                continue;
            }
        };
        if now.is_some() && verdict.lock().is_ok_and(|v| v.is_none()) {
            tracing::warn!(relay = %name, reason = now.as_deref().unwrap_or(""), "relay stalled: not ready");
        }
        if let Ok(mut v) = verdict.lock() {
            *v = now;
        }
    }
}

/// Watches the durable consumer `durable` on `stream`, and counts its dead letters.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consumer(
    bus: Bus,
    stream: StreamKind,
    durable: String,
    dead_lettered: Arc<dyn Fn() -> u64 + Send + Sync>,
    metrics: Metrics,
    limit: Duration,
    verdict: Verdict,
    shutdown: CancellationToken,
) {
    let lag = metrics.consumer_lag().with_label_values(&[&durable]);
    let dlq = metrics.dlq_messages_total().with_label_values(&[&durable]);
    let mut counted = 0u64;
    let mut stall = Stall::new(limit);
    let mut tick = tokio::time::interval(every(limit));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dead = dead_lettered();
        dlq.inc_by(dead.saturating_sub(counted));
        counted = counted.max(dead);
        let info = async {
            let mut c = bus
                .jetstream()
                .get_stream(bus.stream_name(stream))
                .await
                .ok()?
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable)
                .await
                .ok()?;
            c.info().await.ok().cloned()
        }
        .await;
        let Some(info) = info else {
            // NATS itself is checked on its own; a consumer not made yet has nothing waiting.
            continue;
        };
        lag.set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        let waiting = info.num_pending > 0 || info.num_ack_pending > 0;
        let now = stall
            .observe(Instant::now(), waiting, info.ack_floor.stream_sequence)
            .then(|| {
                format!(
                    "consumer {durable} stalled: {} messages waiting, {} unacked, no ack for {} s",
                    info.num_pending,
                    info.num_ack_pending,
                    limit.as_secs()
                )
            });
        if now.is_some() && verdict.lock().is_ok_and(|v| v.is_none()) {
            tracing::warn!(consumer = %durable, reason = now.as_deref().unwrap_or(""), "consumer stalled: not ready");
        }
        if let Ok(mut v) = verdict.lock() {
            *v = now;
        }
    }
}
