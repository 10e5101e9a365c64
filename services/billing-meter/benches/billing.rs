//! `cargo bench -p keel-billing --bench billing`: what the billing meter sustains, beside the raw
//! limit that bounds it, measured in the same run. Asserts nothing but exactness.
//!
//! Starts the real `keel-tenant` and `keel-billing` binaries (a test mesh on port 0, one fresh
//! bus namespace and schemas) against the local PostgreSQL, NATS and Redis, then measures:
//! - ingest over gRPC: `RecordUsage` batches of 1,000 from 4 clients (events/s);
//! - ingest over NATS: 1,000-event bursts published on `keel.usage.<tenant>`, publish to stored;
//! - the raw limit: the same rows, every column, as plain multi-row INSERTs of 1,000 on one
//!   connection (no checks, dedupe claims, window marks or gRPC) into a copy of `usage_events`,
//!   in the same run;
//! - event → visible to GetUsage at a steady 5,000 events/s over NATS (p50/p99: publish time to
//!   the row's commit time, the table GetUsage reads);
//! - a redelivery storm: every event of 10,000 published 3 times; totals must come out exact.
//!
//! Settings: KEEL_BENCH_EVENTS (50000) per ingest figure, KEEL_BENCH_SECONDS (10) steady load.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh, Part};
use keel_proto::v1 as pb;
use keel_proto::v1::meter_service_client::MeterServiceClient;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

fn ts(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn usage(tenant: &str, source: &str, id: u64, at: chrono::DateTime<Utc>) -> pb::UsageEvent {
    pb::UsageEvent {
        id: format!("e{id}"),
        source: source.into(),
        time: Some(ts(at)),
        tenant_id: tenant.into(),
        meter: "api_requests".into(),
        value: "1".into(),
        ..Default::default()
    }
}

fn cloudevent(tenant: &str, source: &str, id: u64, at: chrono::DateTime<Utc>) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "specversion": "1.0", "id": format!("e{id}"), "source": source, "type": "keel.usage.v1",
            "time": at.to_rfc3339(), "tenantid": tenant,
            "data": {"meter": "api_requests", "value": "1"},
        })
        .to_string(),
    )
}

async fn stored(mesh: &Mesh, source: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.usage_events WHERE source = $1",
        mesh.schema(Part::Billing)
    ))
    .bind(source)
    .fetch_one(&mesh.pool)
    .await
    .unwrap_or(0)
}

async fn wait_stored(mesh: &Mesh, source: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stored(mesh, source).await < n {
        assert!(Instant::now() < deadline, "{source}: not all {n} stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(mesh: &Mesh, tenant: &str, source: &str, ids: impl Iterator<Item = u64>, copy: &str) {
    let js = mesh.bus.jetstream().clone();
    let subject = keel_events::subjects::usage(&mesh.bus.subject_prefix(), tenant);
    let mut acks = Vec::new();
    let now = Utc::now() - chrono::Duration::minutes(1);
    for id in ids {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{source}-{id}-{copy}").as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), headers, cloudevent(tenant, source, id, now))
                .await
                .expect("publish"),
        );
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                a.await.expect("ack");
            }
        }
    }
    for a in acks {
        a.await.expect("ack");
    }
}

#[tokio::main]
async fn main() {
    let events = setting("KEEL_BENCH_EVENTS", 50_000);
    let seconds = setting("KEEL_BENCH_SECONDS", 10);
    let mesh = Mesh::builder()
        .tenant(&[("KEEL_LOG", "warn")])
        .billing(&[("KEEL_LOG", "warn")])
        .start()
        .await;
    println!(
        "keel-billing bench: {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let channel = mesh.proc(Part::Billing).channel().await.unwrap();
    let client = MeterServiceClient::with_interceptor(channel, Bearer(Some(mesh.operator.clone())))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let tenant = "bench-tenant";
    let at = Utc::now() - chrono::Duration::minutes(2);

    // 1. gRPC ingest: batches of 1000 from 4 clients.
    let start = Instant::now();
    let batches = events / 1000;
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for b in (worker..batches).step_by(4) {
                let batch: Vec<pb::UsageEvent> = (0..1000)
                    .map(|i| usage(tenant, "bench-grpc", b * 1000 + i, at))
                    .collect();
                c.record_usage(pb::RecordUsageRequest { events: batch })
                    .await
                    .expect("RecordUsage");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grpc = (batches * 1000) as f64 / start.elapsed().as_secs_f64();

    // 2. The raw limit: the same rows, multi-row INSERTs of 1000 into a copy of the table.
    let schema = mesh.schema(Part::Billing);
    sqlx::query(&format!(
        "CREATE TABLE {schema}.raw_usage (LIKE {schema}.usage_events INCLUDING ALL)"
    ))
    .execute(&mesh.pool)
    .await
    .unwrap();
    // The same rows as the gRPC batches (every column bound as an array, as the service does),
    // by a plain multi-row INSERT on one connection: no checks, no claims, no window marks.
    let start = Instant::now();
    for b in 0..batches {
        let n = 1000usize;
        let ids: Vec<String> = (0..n as u64).map(|i| format!("e{}", b * 1000 + i)).collect();
        let text = |v: &str| vec![v.to_owned(); n];
        sqlx::query(&format!(
            "INSERT INTO {schema}.raw_usage (tenant_id, source, event_id, meter, meter_version, event_type, subject, \
                 valid_at, value, unique_key, group_key, properties) \
             SELECT t, s, i, m, mv, et, sj, va, v::numeric, u, g, p FROM UNNEST( \
                 $1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[], \
                 $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::jsonb[]) \
                 AS x(t, s, i, m, mv, et, sj, va, v, u, g, p)"
        ))
        .bind(text(tenant))
        .bind(text("raw"))
        .bind(&ids)
        .bind(text("api_requests"))
        .bind(vec![1i32; n])
        .bind(text("keel.usage.v1"))
        .bind(text(""))
        .bind(vec![at; n])
        .bind(text("1"))
        .bind(vec![None::<String>; n])
        .bind(text("{}"))
        .bind(vec![serde_json::json!({}); n])
        .execute(&mesh.pool)
        .await
        .unwrap();
    }
    let raw = (batches * 1000) as f64 / start.elapsed().as_secs_f64();

    // 3. NATS ingest: publish everything, then wait until stored.
    let start = Instant::now();
    publish_all(&mesh, tenant, "bench-nats", 0..events, "a").await;
    let published = start.elapsed();
    wait_stored(&mesh, "bench-nats", events as i64).await;
    let nats = events as f64 / start.elapsed().as_secs_f64();
    println!("ingest, events/s (n={events} each):");
    println!("  raw multi-row INSERT of 1000 (limit) {raw:>9.0}");
    println!(
        "  RecordUsage, batches of 1000, 4 clients {grpc:>9.0}  ratio to raw {:.2}",
        grpc / raw
    );
    println!(
        "  NATS publish → stored                {nats:>9.0}  ratio to raw {:.2}  (publishing alone took {:.2} s)",
        nats / raw,
        published.as_secs_f64()
    );

    // 4. Event → visible at a steady 5,000 events/s over NATS (bursts of 100 every 20 ms).
    let js = mesh.bus.jetstream().clone();
    let subject = keel_events::subjects::usage(&mesh.bus.subject_prefix(), tenant);
    let mut sent: Vec<(String, chrono::DateTime<Utc>)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut id = 0u64;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tick.tick().await;
        let now = Utc::now();
        for _ in 0..100 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("lat-{id}").as_str());
            let _ = js
                .publish_with_headers(subject.clone(), headers, cloudevent(tenant, "bench-lat", id, now))
                .await
                .expect("publish");
            if id.is_multiple_of(50) {
                sent.push((format!("e{id}"), now));
            }
            id += 1;
        }
    }
    wait_stored(&mesh, "bench-lat", id as i64).await;
    let rows: Vec<(String, chrono::DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT event_id, recorded_at FROM {schema}.usage_events WHERE source = 'bench-lat'"
    ))
    .fetch_all(&mesh.pool)
    .await
    .unwrap();
    let at: std::collections::HashMap<String, chrono::DateTime<Utc>> = rows.into_iter().collect();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(e, t)| {
            at.get(e)
                .map(|r| (*r - *t).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "event → visible (publish → committed row), steady {:.0} events/s for {seconds} s: n={} p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        id as f64 / seconds as f64,
        lat.len(),
        p(0.50),
        p(0.99),
        p(1.0)
    );

    // 5. Redelivery storm: 10,000 events, each published 3 times.
    let storm = 10_000u64;
    let start = Instant::now();
    for copy in ["1", "2", "3"] {
        publish_all(&mesh, tenant, "bench-storm", 0..storm, copy).await;
    }
    wait_stored(&mesh, "bench-storm", storm as i64).await;
    // Every copy handled: the consumer has nothing pending.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let info = mesh
            .bus
            .jetstream()
            .get_stream(mesh.bus.stream_name(keel_bus::StreamKind::Usage))
            .await
            .unwrap()
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("billing-usage")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the storm was not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (n, total): (i64, String) = sqlx::query_as(&format!(
        "SELECT count(*), sum(value)::text FROM {schema}.usage_events WHERE source = 'bench-storm'"
    ))
    .fetch_one(&mesh.pool)
    .await
    .unwrap();
    println!(
        "redelivery storm: {} messages ({storm} events × 3) in {:.2} s → {n} stored, total {total} (exact: {})",
        storm * 3,
        start.elapsed().as_secs_f64(),
        n == storm as i64 && total == storm.to_string()
    );
    println!("load after: {}", loadavg());
    mesh.cleanup().await;
}
