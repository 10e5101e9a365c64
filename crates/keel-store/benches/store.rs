//! `just bench` for keel-store: prints figures, asserts nothing.
//!
//! In one run, on the same PostgreSQL and NATS, at concurrency 1, 8 and 16:
//! - raw single-row INSERT commits/s (the ceiling),
//! - cqrs-es commands/s through keel-store (each creates one aggregate with one ~500-byte event),
//! - the same commands through postgres-es (cqrs-es' own Postgres repository);
//!
//! each the median of KEEL_BENCH_REPETITIONS (default 3) interleaved runs; then the relay's
//! throughput into JetStream from a pre-filled table, and the latency from append commit to the
//! JetStream ack (and to delivery to a consumer) at a steady 2,000 events/s.
//!
//! Settings: KEEL_BENCH_SECONDS (default 5) per measurement, KEEL_BENCH_RELAY_EVENTS (100000),
//! KEEL_BENCH_ONLY=store|relay for one half.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use futures::StreamExt;
use keel_bus::StreamKind;
use keel_store::Metadata;
use keel_store::relay::{AckLog, Relay, RelayConfig};
use keel_store::testing::{TestEnv, database_url};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Default, Serialize, Deserialize)]
struct BenchTenant {
    created: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum BenchTenantEvent {
    TenantCreated {
        tenant_id: String,
        name: String,
        slug: String,
        tier: String,
        owner_email_enc: serde_json::Value,
        request_id: String,
    },
}

impl DomainEvent for BenchTenantEvent {
    fn event_type(&self) -> String {
        "TenantCreated".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("already created")]
struct Exists;

impl Aggregate for BenchTenant {
    const TYPE: &'static str = "tenant";
    type Command = String;
    type Event = BenchTenantEvent;
    type Error = Exists;
    type Services = ();

    async fn handle(&mut self, id: String, _: &(), sink: &EventSink<Self>) -> Result<(), Exists> {
        if self.created {
            return Err(Exists);
        }
        sink.write(
            BenchTenantEvent::TenantCreated {
                tenant_id: id.clone(),
                name: format!("Tenant {id}"),
                slug: format!("t-{}", &id[..8]),
                tier: "mid".into(),
                owner_email_enc: json!({"key_id": "k1", "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "x".repeat(220)}),
                request_id: Uuid::new_v4().to_string(),
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, _: BenchTenantEvent) {
        self.created = true;
    }
}

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("KEEL_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0),
    )
}

/// Repetitions of each figure (KEEL_BENCH_REPETITIONS, default 3); the median is printed.
fn repetitions() -> usize {
    std::env::var("KEEL_BENCH_REPETITIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize)
        .max(1)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs `op` from `concurrency` tasks for the bench duration; returns operations per second.
async fn rate<F, Fut>(concurrency: usize, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + seconds();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, done) = (op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                op().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn pool(schema: &str, size: u32) -> Result<PgPool> {
    let opts: PgConnectOptions = database_url()
        .parse::<PgConnectOptions>()?
        .options([("search_path", schema)]);
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .connect_with(opts)
        .await?)
}

async fn postgres_es_schema(admin: &PgPool, schema: &str) -> Result<()> {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, event_version text NOT NULL, \
         payload json NOT NULL, metadata json NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, sequence))"
    ))
    .execute(admin)
    .await?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
         last_sequence bigint NOT NULL, current_snapshot bigint NOT NULL, payload json NOT NULL, \
         PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))"
    ))
    .execute(admin)
    .await?;
    Ok(())
}

fn metadata() -> HashMap<String, String> {
    Metadata::new("acme", "service:bench")
        .with_request_id(Some(Uuid::new_v4().to_string()))
        .into_map()
}

#[tokio::main]
async fn main() -> Result<()> {
    println!(
        "keel-store bench: {}s per figure, PostgreSQL {}",
        seconds().as_secs_f64(),
        database_url()
    );
    let env = TestEnv::new("bench").await?;
    let admin = env.store.pool().clone();
    sqlx::query("CREATE TABLE raw_insert (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&admin)
        .await?;
    let pges_schema = format!("{}_pges", env.store.schema());
    postgres_es_schema(&admin, &pges_schema).await?;
    let raw_payload = json!({"tenant_id": "x", "blob": "x".repeat(450)});

    println!(
        "\n| concurrency | raw INSERT commits/s | keel-store cmds/s | postgres-es cmds/s | keel/raw | keel/postgres-es |"
    );
    println!("|---|---|---|---|---|---|");
    let only = std::env::var("KEEL_BENCH_ONLY").unwrap_or_default();
    for concurrency in [1usize, 8, 16] {
        if only == "relay" {
            break;
        }
        let size = concurrency as u32;
        let raw_pool = pool(env.store.schema(), size).await?;
        let payload = raw_payload.clone();
        let raw_op = move || {
            let (p, v) = (raw_pool.clone(), payload.clone());
            async move {
                let _ = sqlx::query("INSERT INTO raw_insert (payload) VALUES ($1)")
                    .bind(v)
                    .execute(&p)
                    .await;
            }
        };
        let keel_store =
            keel_store::Store::connect_with(&database_url(), env.store.schema(), "bench", size).await?;
        let keel_cqrs = Arc::new(keel_store.framework::<BenchTenant>(()));
        let keel_op = move || {
            let c = keel_cqrs.clone();
            async move {
                let id = Uuid::now_v7().to_string();
                if let Err(e) = c.execute_with_metadata(&id, id.clone(), metadata()).await {
                    eprintln!("keel-store command failed: {e}");
                }
            }
        };
        let pges_cqrs = Arc::new(postgres_es::postgres_cqrs::<BenchTenant>(
            pool(&pges_schema, size).await?,
            vec![],
            (),
        ));
        let pges_op = move || {
            let c = pges_cqrs.clone();
            async move {
                let id = Uuid::now_v7().to_string();
                if let Err(e) = c.execute_with_metadata(&id, id.clone(), metadata()).await {
                    eprintln!("postgres-es command failed: {e}");
                }
            }
        };
        // Interleaved repetitions, so that a burst of load elsewhere on the machine hits all
        // three alike; each figure is the median of its repetitions.
        let (mut raw, mut keel, mut pges) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repetitions() {
            raw.push(rate(concurrency, raw_op.clone()).await);
            keel.push(rate(concurrency, keel_op.clone()).await);
            pges.push(rate(concurrency, pges_op.clone()).await);
        }
        let (raw, keel, pges) = (median(raw), median(keel), median(pges));
        println!(
            "| {concurrency} | {raw:.0} | {keel:.0} | {pges:.0} | {:.2} | {:.2} |",
            keel / raw,
            keel / pges
        );
    }

    if only != "store" {
        relay_throughput(&env).await?;
        // The relay as it was (an empty poll every 5 ms) and as it is (woken by NOTIFY, a 5 ms
        // poll only while events are held back), in the same run.
        relay_latency(&env, "polling every 5 ms", Some(Duration::from_millis(5))).await?;
        relay_latency(&env, "woken by NOTIFY", None).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {pges_schema} CASCADE"))
        .execute(&admin)
        .await?;
    env.cleanup().await?;
    Ok(())
}

/// Pre-fills the table, then times one relay draining it into JetStream.
async fn relay_throughput(env: &TestEnv) -> Result<()> {
    let n: i64 = std::env::var("KEEL_BENCH_RELAY_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let pool = env.store.pool();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    // Earlier figures appended events; publish those first so the timing covers only the pre-fill.
    let warm = CancellationToken::new();
    let relay = Relay::new(&env.store, env.bus.clone(), RelayConfig::default()).start(warm.clone());
    wait_checkpoint(pool, before).await?;
    warm.cancel();
    relay.join().await?;
    sqlx::query(
        "INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT gen_random_uuid(), 'acme', 'tenant', 'prefill-' || g, 1, 'TenantCreated', '1', \
                jsonb_build_object('tenant_id', 'prefill-' || g, 'blob', repeat('x', 420)), \
                '{\"tenant_id\": \"acme\", \"actor\": \"service:bench\"}'::jsonb \
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(pool)
    .await?;
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let relay = Relay::new(&env.store, env.bus.clone(), RelayConfig::default()).start(shutdown.clone());
    wait_checkpoint(pool, before + n).await?;
    let elapsed = start.elapsed();
    shutdown.cancel();
    relay.join().await?;
    println!(
        "\nrelay throughput: {n} pre-filled events into JetStream in {:.2}s = {:.0} events/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn wait_checkpoint(pool: &PgPool, events: i64) -> Result<()> {
    let target: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(pool)
        .await?;
    let Some(target) = target else { return Ok(()) };
    let _ = events;
    loop {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT global_position FROM relay_checkpoints WHERE relay = 'jetstream'")
                .fetch_optional(pool)
                .await?;
        if at.is_some_and(|p| p >= target) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends at a steady 2,000 events/s for the bench duration while the relay runs, and measures
/// for each event the time from its commit to (a) the JetStream ack of the relay's publish, as
/// recorded by the relay's ack log, and (b) its delivery to an ordered push consumer, which
/// adds the server's push delivery to the consumer and that consumer's own scheduling.
async fn relay_latency(env: &TestEnv, label: &str, idle_poll: Option<Duration>) -> Result<()> {
    let pool = env.store.pool().clone();
    let shutdown = CancellationToken::new();
    // The pre-fill left autovacuum a large table to vacuum and analyze; do it now, so that its
    // I/O does not land in the middle of the measurement.
    sqlx::query("VACUUM (ANALYZE) events").execute(&pool).await?;
    let acks = Arc::new(AckLog::new(1_000_000));
    let mut config = RelayConfig {
        ack_log: Some(acks.clone()),
        ..RelayConfig::default()
    };
    if let Some(poll) = idle_poll {
        config.idle_poll = poll;
    }
    let relay = Relay::new(&env.store, env.bus.clone(), config).start(shutdown.clone());
    wait_checkpoint(&pool, 0).await?;
    // An ordered JetStream consumer: a message reaches it only once the stream has stored it.
    let stream = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Events))
        .await?;
    let mut sub = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: env.bus.client().new_inbox(),
            filter_subject: format!("{}keel.evt.lat.>", env.bus.subject_prefix()),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let committed: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let rate_per_s = 2000u64;
    let total = (seconds().as_secs_f64() * rate_per_s as f64) as u64;
    let writer = {
        let (pool, committed) = (pool.clone(), committed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_s * 8));
            let mut sent = 0;
            while sent < total {
                tick.tick().await;
                // 8 concurrent single-event commits per tick, 2,000/s in all.
                let mut batch = Vec::new();
                for _ in 0..8 {
                    let (pool, committed) = (pool.clone(), committed.clone());
                    batch.push(tokio::spawn(async move {
                        let id = Uuid::now_v7();
                        let r = sqlx::query(
                            "INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                             VALUES ($1, 'lat', 'tenant', $2, 1, 'TenantCreated', '1', '{\"blob\": \"x\"}', '{\"tenant_id\": \"lat\", \"actor\": \"system\"}')",
                        )
                        .bind(id)
                        .bind(id.to_string())
                        .execute(&pool)
                        .await;
                        if r.is_ok()
                            && let Ok(mut m) = committed.lock()
                        {
                            m.insert(id.to_string(), Instant::now());
                        }
                    }));
                }
                for b in batch {
                    let _ = b.await;
                }
                sent += 8;
            }
        })
    };
    let mut latencies = Vec::new();
    let deadline = Instant::now() + seconds() + Duration::from_secs(10);
    while (latencies.len() as u64) < total && Instant::now() < deadline {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await else {
            break;
        };
        let arrived = Instant::now();
        let Ok(env) = keel_events::Envelope::parse(&msg.payload) else {
            continue;
        };
        let start = committed
            .lock()
            .ok()
            .and_then(|m| m.get(&env.id.to_string()).copied());
        if let Some(start) = start {
            latencies.push(arrived.saturating_duration_since(start));
        }
    }
    let _ = writer.await;
    wait_checkpoint(&pool, 0).await?;
    shutdown.cancel();
    relay.join().await?;
    // The same events, timed at the relay: from the writer's INSERT returning (committed) to the
    // JetStream publish ack reaching the relay (the event is stored in the stream).
    let committed = committed.lock().map(|m| m.clone()).unwrap_or_default();
    let mut acked: Vec<Duration> = acks
        .take()
        .into_iter()
        .filter_map(|(id, at)| {
            committed
                .get(&id.to_string())
                .map(|c| at.saturating_duration_since(*c))
        })
        .collect();
    let stream = env.bus.stream_name(StreamKind::Events);
    print_latency(
        &format!("{label}: commit → JetStream ack of the relay's publish (stored in {stream})"),
        &mut acked,
    );
    print_latency(
        &format!("{label}: commit → delivery to an ordered push consumer of the stream"),
        &mut latencies,
    );
    Ok(())
}

fn print_latency(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    println!(
        "relay latency at 2,000 events/s, {what}: n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}
