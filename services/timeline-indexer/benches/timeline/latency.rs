//! Append → visible at a steady 2,000 events/s.
//!
//! The producer is a service's event store as keel-store runs it: its own schema
//! (`keel_store::Store::connect`) and outbox relay (`Relay::spawn`) on the bench namespace. Every
//! 4 ms, 8 single-event transactions are started (2,000/s, not waiting for each other), each an
//! INSERT into its `events` table over the 100 tenants with the metadata cqrs-es stores
//! (tenant_id, actor, traceparent, request_id). Every Nth event is a sample: from the moment its
//! INSERT's commit returns, a poller calls GetEvent for it (gRPC, operator token, so no rate
//! limit) every 2 ms until it is found (every 10 ms once it is 100 ms late, every 50 ms once a
//! second late, so that pollers of late samples do not become the load that delays the rest);
//! "visible" is when that first successful response arrives. The figure therefore covers the
//! relay (5 ms idle poll, commit-order gate, publish and JetStream ack), the runner (pull, batch
//! transaction, commit) and one GetEvent call, to within the poll period.
//!
//! Beside it, for the same samples: commit → delivery to an ordered push consumer of the stream
//! (the relay's share), and the round trip of every GetEvent poll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::StreamExt;
use keel_bus::StreamKind;
use keel_proto::v1 as pb;
use keel_store::relay::Relay;
use keel_store::testing::database_url;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ingest::nats;
use crate::{Dist, Timeline, World};

/// Every 2 ms where the target lies; sparser for a sample already late, so that a backlog does
/// not turn the pollers into the load that delays the projection.
fn poll_period(age: Duration) -> Duration {
    match age.as_millis() {
        0..100 => Duration::from_millis(2),
        100..1000 => Duration::from_millis(10),
        _ => Duration::from_millis(50),
    }
}

const GIVE_UP: Duration = Duration::from_secs(10);
const PER_TICK: u64 = 8;
const TICK: Duration = Duration::from_millis(4);

pub struct Latency {
    pub visible_p99: f64,
    pub stream_p99: f64,
    pub get_p50: f64,
}

type Commits = Arc<Mutex<HashMap<Uuid, Instant>>>;

enum Outcome {
    NotSampled,
    Visible(Duration),
    Lost,
    Failed,
}

/// Shared by every append task.
struct Producer {
    pool: PgPool,
    tenants: Vec<String>,
    client: Timeline,
    commits: Commits,
    get_rtts: Mutex<Vec<Duration>>,
    polls: AtomicU64,
    every: u64,
}

impl Producer {
    async fn append(&self, i: u64) -> Outcome {
        let id = Uuid::now_v7();
        let tenant = &self.tenants[i as usize % self.tenants.len()];
        let trace = Uuid::new_v4().simple().to_string();
        let payload = json!({"StepSucceeded": {"project_id": format!("p{}", i % 7), "step": i, "detail": "x".repeat(300)}});
        let metadata = json!({"tenant_id": tenant, "actor": "user:bench", "request_id": Uuid::new_v4().to_string(),
            "traceparent": format!("00-{trace}-00f067aa0ba902b7-01")});
        let insert = sqlx::query(
            "INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ($1, $2, 'run', $3, 1, 'StepSucceeded', '1', $4, $5)",
        )
        .bind(id)
        .bind(tenant)
        .bind(id.to_string())
        .bind(payload)
        .bind(metadata)
        .execute(&self.pool)
        .await;
        let committed = Instant::now();
        if insert.is_err() {
            return Outcome::Failed;
        }
        if !i.is_multiple_of(self.every) {
            return Outcome::NotSampled;
        }
        if let Ok(mut m) = self.commits.lock() {
            m.insert(id, committed);
        }
        let req = pb::GetEventRequest {
            tenant_id: tenant.clone(),
            event_id: id.to_string(),
        };
        while committed.elapsed() < GIVE_UP {
            let sent = Instant::now();
            let found = self.client.clone().get_event(req.clone()).await;
            let arrived = Instant::now();
            self.polls.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut r) = self.get_rtts.lock() {
                r.push(arrived - sent);
            }
            match found {
                Ok(_) => return Outcome::Visible(arrived - committed),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(_) => return Outcome::Failed,
            }
            tokio::time::sleep_until((sent + poll_period(sent - committed)).into()).await;
        }
        Outcome::Lost
    }
}

pub async fn run(w: &World, schema: &str, run_for: Duration, every: u64) -> Result<Latency> {
    let rate = PER_TICK as f64 / TICK.as_secs_f64();
    println!(
        "\n== append → visible: {rate:.0} events/s for {}s into a keel-store event store + relay, every {every}th sampled ==",
        run_for.as_secs()
    );
    let store = keel_store::Store::connect(&database_url(), schema, "provisioning").await?;
    let stop = CancellationToken::new();
    let relay = Relay::spawn(&store, w.bus.clone(), stop.clone());
    let stream = w
        .bus
        .jetstream()
        .get_stream(w.bus.stream_name(StreamKind::Events))
        .await
        .map_err(nats)?;
    let mut arrivals = stream
        .create_consumer(OrderedConfig {
            deliver_subject: w.bus.client().new_inbox(),
            filter_subject: format!("{}keel.evt.>", w.bus.subject_prefix()),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(nats)?
        .messages()
        .await
        .map_err(nats)?;
    let commits: Commits = Arc::default();
    let watcher = {
        let (commits, stop) = (commits.clone(), stop.clone());
        tokio::spawn(async move {
            let mut on_stream = Vec::new();
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => return on_stream,
                    m = arrivals.next() => m,
                };
                let Some(Ok(msg)) = msg else { return on_stream };
                let arrived = Instant::now();
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .and_then(|v| v.as_str().parse::<Uuid>().ok());
                let committed = id.and_then(|id| commits.lock().ok()?.get(&id).copied());
                if let Some(c) = committed {
                    on_stream.push(arrived.saturating_duration_since(c));
                }
            }
        })
    };

    let channel = w.channel().await?;
    let producer = Arc::new(Producer {
        pool: store.pool().clone(),
        tenants: w.tenants.iter().map(|(id, _)| id.clone()).collect(),
        client: World::client(&channel, &w.operator),
        commits,
        get_rtts: Mutex::default(),
        polls: AtomicU64::new(0),
        every,
    });
    let mut tick = tokio::time::interval(TICK);
    let (start, mut i, mut tasks) = (Instant::now(), 0u64, Vec::new());
    while start.elapsed() < run_for {
        tick.tick().await;
        for _ in 0..PER_TICK {
            let p = producer.clone();
            tasks.push(tokio::spawn(async move { p.append(i).await }));
            i += 1;
        }
    }
    let producing = start.elapsed().as_secs_f64();
    let (mut visible, mut lost, mut failed) = (Vec::new(), 0, 0);
    for t in tasks {
        match t.await? {
            Outcome::Visible(d) => visible.push(d),
            Outcome::Lost => lost += 1,
            Outcome::Failed => failed += 1,
            Outcome::NotSampled => {}
        }
    }
    let polling = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    relay.join().await?;
    let on_stream = Dist::new(watcher.await?);
    store.pool().close().await;

    let visible = Dist::new(visible);
    let rtts = Dist::new(producer.get_rtts.lock().map(|r| r.clone()).unwrap_or_default());
    println!(
        "appended {i} events in {producing:.1}s = {:.0}/s; {failed} failed; samples not visible within {}s: {lost}",
        i as f64 / producing,
        GIVE_UP.as_secs()
    );
    println!("commit → visible through GetEvent      {}", visible.line());
    println!("commit → on the stream (relay's share) {}", on_stream.line());
    println!(
        "GetEvent round trip, every poll        {}  ({:.0} polls/s)",
        rtts.line(),
        producer.polls.load(Ordering::Relaxed) as f64 / polling
    );
    println!(
        "visible − on stream: p50 {:.1} ms, p99 {:.1} ms (the runner's pull + transaction, one GetEvent, the poll period)",
        visible.ms(50.0) - on_stream.ms(50.0),
        visible.ms(99.0) - on_stream.ms(99.0)
    );
    let (_, batches) = w.runner_batches("actor = 'user:bench'").await?;
    println!("these events in the timeline: {batches}");
    Ok(Latency {
        visible_p99: visible.ms(99.0),
        stream_p99: on_stream.ms(99.0),
        get_p50: rtts.ms(50.0),
    })
}
