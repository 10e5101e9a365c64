//! Ingest: how fast the projection drains a backlog.
//!
//! While keel-timeline is not running, KEEL_EVENTS of the fresh namespace is filled with N
//! ~500-byte envelopes over the 100 tenants (pipelined publishes). Then the timeline starts; the
//! clock runs from its consumer's first delivery until that consumer has nothing pending and
//! nothing unacked (the runner acks after commit, so every row is in), checked by counting rows.
//!
//! Raw limits on the same data, in the same run, each from one connection as the runner has:
//! - JetStream read+ack: an ephemeral pull consumer on the same subjects takes the backlog in
//!   batches of 1000 and acks each message, as the runner does, without touching PostgreSQL;
//! - INSERT×1000: the rows the projection writes, as plain multi-row INSERTs of 1000 literal rows
//!   (what psql sends: simple protocol, one statement per transaction) into a fresh table of the
//!   same shape (monthly partitions, primary key and 5 indexes, RLS);
//! - the runner's PostgreSQL work alone: `store::insert_rows` (bind parameters, ON CONFLICT) of
//!   1000 rows in a transaction with a savepoint, as each batch is applied, into the same table.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use keel_bus::StreamKind;
use keel_events::Envelope;
use keel_timeline::domain::TimelineRow;
use keel_timeline::store::{ddl, insert_rows};
use serde_json::json;
use sqlx::Acquire;

use crate::World;

const ENVELOPE_BYTES: usize = 500;
const BATCH: usize = 1000;
const SCRATCH: &str = "timeline_bench_raw";

pub struct Ingest {
    pub rate: f64,
    pub bus_read: f64,
    pub raw_insert: f64,
}

pub fn nats(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("nats: {e}")
}

/// Event `i` of the pre-fill: tenant `i mod 100`, one of 7 projects, a trace id, `pad` bytes of
/// detail so the envelope is ~500 bytes.
fn envelope(tenants: &[(String, String)], i: u64, pad: usize) -> Result<Envelope> {
    let tenant = &tenants[i as usize % tenants.len()].0;
    let trace = uuid::Uuid::new_v4().simple().to_string();
    Ok(Envelope::builder("provisioning", "StepSucceeded", 1)
        .tenant(tenant)
        .actor(format!("user:u{}", i % 50))
        .traceparent(Some(format!("00-{trace}-00f067aa0ba902b7-01")))
        .aggregate("run", format!("run-{}", i / 10), i % 10 + 1)
        .data(json!({"project_id": format!("p{}", i % 7), "step": i, "detail": "x".repeat(pad)}))
        .build()?)
}

pub async fn run(w: &mut World, n: u64) -> Result<Ingest> {
    println!("\n== ingest: {n} pre-filled events, keel-timeline started afterwards ==");
    let base = envelope(&w.tenants, 0, 0)?.to_json_bytes().len();
    let pad = ENVELOPE_BYTES.saturating_sub(base);
    let prefix = w.bus.subject_prefix();
    let start = Instant::now();
    let (mut acks, mut bytes) = (Vec::new(), 0usize);
    for i in 0..n {
        let e = envelope(&w.tenants, i, pad)?;
        bytes += e.to_json_bytes().len();
        acks.push(w.bus.publish_envelope(e.nats_subject(&prefix), &e).await?);
        if acks.len() == 10_000 {
            for a in acks.drain(..) {
                a.await.map_err(nats)?;
            }
        }
    }
    for a in acks {
        a.await.map_err(nats)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pre-fill: {n} envelopes, mean {} bytes, published in {secs:.2}s = {:.0}/s (pipelined, acked)",
        bytes / n.max(1) as usize,
        n as f64 / secs
    );

    let mut stream = w
        .bus
        .jetstream()
        .get_stream(w.bus.stream_name(StreamKind::Events))
        .await
        .map_err(nats)?;
    let state = stream.info().await.map_err(nats)?.state.clone();
    let bus_read = read_and_ack(&stream, &format!("{prefix}keel.evt.>"), state.messages).await?;
    println!(
        "raw limit, JetStream read+ack alone: {} messages (the pre-fill and the 100 tenants' own events) at {bus_read:.0}/s",
        state.messages
    );

    let spawned = Instant::now();
    w.start_timeline().await?;
    let listening = spawned.elapsed();
    let generation: i32 = sqlx::query_scalar("SELECT generation FROM timeline_state WHERE id = 1")
        .fetch_one(&w.db)
        .await?;
    let name = format!("timeline-events-g{generation}");
    // Delivered but not yet acked, sampled while draining: whether the runner is short of
    // messages (the bus is the bound) or sits on a full buffer (its own work is).
    let (mut first, mut in_flight) = (None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(1800);
    let done = loop {
        anyhow::ensure!(Instant::now() < deadline, "ingest did not finish in 30 minutes");
        if let Ok(mut c) = stream.get_consumer::<pull::Config>(&name).await {
            let info = c.info().await.map_err(nats)?;
            if first.is_none() && info.delivered.stream_sequence > 0 {
                first = Some(Instant::now());
            }
            if first.is_some() {
                in_flight.push(info.num_ack_pending);
            }
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= state.last_sequence
            {
                break Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let first = first.unwrap_or(done);
    let (rows, batches) = w.runner_batches("kind = 'provisioning.StepSucceeded'").await?;
    let drain = done.duration_since(first).as_secs_f64();
    let rate = state.messages as f64 / drain;
    println!(
        "keel-timeline: up in {:.2}s; {} messages drained in {drain:.2}s from its first delivery = {rate:.0} events/s \
         ({:.2}s from process start)\n  the pre-fill ({rows} of {n} rows): {batches}\n  delivered but unacked while \
         draining (consumer info every 10 ms): mean {:.0}, max {}",
        listening.as_secs_f64(),
        state.messages,
        done.duration_since(spawned).as_secs_f64(),
        in_flight.iter().sum::<usize>() as f64 / in_flight.len().max(1) as f64,
        in_flight.iter().max().copied().unwrap_or_default()
    );

    let (raw_insert, runner_sql) = raw_inserts(w, n, pad).await?;
    println!("raw limit, INSERT×{BATCH} literal rows (psql-like): {raw_insert:.0} rows/s");
    println!(
        "the runner's PostgreSQL work alone (insert_rows ×{BATCH} + savepoint + commit): {runner_sql:.0} rows/s"
    );
    let serial = 1.0 / (1.0 / bus_read + 1.0 / runner_sql);
    println!(
        "ingest / INSERT×{BATCH} = {:.2}; ingest / runner SQL = {:.2}; ingest / JetStream read+ack = {:.2}; \
         runner SQL then read+ack in series would give {serial:.0}/s ({:.2})",
        rate / raw_insert,
        rate / runner_sql,
        rate / bus_read,
        rate / serial
    );
    Ok(Ingest {
        rate,
        bus_read,
        raw_insert,
    })
}

/// Reads `total` messages on `filter` with an ephemeral pull consumer, acking each; messages/s.
async fn read_and_ack(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    total: u64,
) -> Result<f64> {
    let mut consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .map_err(nats)?;
    for _ in 0..total {
        let m = messages.next().await.context("consumer ended")?.map_err(nats)?;
        m.ack().await.map_err(nats)?;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let name = consumer.info().await.map_err(nats)?.name.clone();
    drop(messages);
    stream.delete_consumer(&name).await.map_err(nats)?;
    Ok(rate)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One multi-row INSERT of literal values, as psql would send it.
fn insert_sql(rows: &[TimelineRow]) -> String {
    let mut sql = format!(
        "INSERT INTO {SCRATCH} (event_id, ts, tenant_id, project_id, kind, actor, resource_type, resource_id, \
         trace_id, result, digest, details, stored, source) VALUES "
    );
    for (i, r) in rows.iter().enumerate() {
        let values = [
            r.event_id.to_string(),
            r.ts.to_rfc3339(),
            r.tenant_id.clone(),
            r.project_id.clone(),
            r.kind.clone(),
            r.actor.clone(),
            r.resource_type.clone(),
            r.resource_id.clone(),
            r.trace_id.clone(),
            r.result.clone(),
            r.digest.clone(),
            r.details.to_string(),
            r.stored.to_string(),
            r.source.to_owned(),
        ];
        let values: Vec<String> = values.iter().map(|v| literal(v)).collect();
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("({})", values.join(",")));
    }
    sql
}

/// Rows/s of (literal multi-row INSERTs, the runner's batch transaction) into a fresh table of
/// the live table's shape. Only the statements are timed, not building the rows.
async fn raw_inserts(w: &World, n: u64, pad: usize) -> Result<(f64, f64)> {
    let mut conn = w.db.acquire().await?;
    ddl::create_table(&mut conn, SCRATCH).await?;
    let mut timed = [Duration::ZERO; 2];
    for (k, t) in timed.iter_mut().enumerate() {
        sqlx::query(&format!("TRUNCATE {SCRATCH}"))
            .execute(&mut *conn)
            .await?;
        for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
            let rows = chunk
                .iter()
                .map(|&i| envelope(&w.tenants, i, pad).map(|e| TimelineRow::from_envelope(&e)))
                .collect::<Result<Vec<_>>>()?;
            if k == 0 {
                let sql = insert_sql(&rows);
                let start = Instant::now();
                sqlx::raw_sql(&sql).execute(&mut *conn).await?;
                *t += start.elapsed();
            } else {
                let refs: Vec<&TimelineRow> = rows.iter().collect();
                let start = Instant::now();
                let mut tx = conn.begin().await?;
                let mut sp = tx.begin().await?;
                insert_rows(&mut sp, SCRATCH, &refs).await?;
                sp.commit().await?;
                tx.commit().await?;
                *t += start.elapsed();
            }
        }
    }
    sqlx::query(&format!("DROP TABLE {SCRATCH}"))
        .execute(&mut *conn)
        .await?;
    Ok((
        n as f64 / timed[0].as_secs_f64(),
        n as f64 / timed[1].as_secs_f64(),
    ))
}
