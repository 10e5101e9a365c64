//! Query: QueryTimeline for a one-hour page of 100 on ≥ 5 million rows over 100 tenants.
//!
//! Rows are bulk-loaded straight into the live table with SQL (`INSERT … SELECT … FROM
//! generate_series`, chunks of 100,000 rows from 2 connections), evenly over the last 30 days and
//! round-robin over the 100 tenants, so the rows of one tenant-hour lie scattered through the heap
//! as the projection writes them; envelopes of ~500 bytes as `stored`. The indexer's own monthly
//! partitions take them (the two months before this one are made sure of first). Then VACUUM
//! ANALYZE, as autovacuum would have left an aged table.
//!
//! Then, at concurrency 1, interleaved so that noise on the machine hits every figure alike, each
//! call with its own random tenant and random whole hour of the last 30 days:
//! - QueryTimeline over gRPC with that tenant's own token (JWT verify and Redis rate-limit check
//!   included), `from` = the hour, `to` = an hour later, page of 100;
//! - the same with a two-hour window, so that pages are full (100 rows and a next-page token);
//! - the same one-hour query in-process through `TimelineStore::query` (RLS transaction: reader
//!   role, tenant setting, SELECT, commit) on the bench's own pool: the database's share;
//! - grpc.health.v1 Check on the same connection: the transport's share (no auth, no database).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures::StreamExt;
use keel_proto::v1 as pb;
use keel_timeline::domain::{Filter, TimeRange};
use keel_timeline::store::{Live, TimelineStore, ddl};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::{Dist, TENANTS, World, loadavg};

const CHUNK: u64 = 100_000;
const DAYS: i64 = 30;
const WARM_UP: usize = 50;
const KINDS: &[&str] = &[
    "provisioning.StepSucceeded",
    "tenant.MemberAdded",
    "billing.UsageAggregated",
    "evaluator.CheckPassed",
    "scheduler.JobDispatched",
    "evidence.BundleSealed",
];

pub struct Query {
    pub grpc_p95: f64,
    pub store_p95: f64,
    pub health_p95: f64,
}

/// Rows `$5..=$6` of the load: row g at `$1 + g·$2` seconds, tenant g mod 100.
fn load_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (event_id, ts, tenant_id, project_id, kind, actor, resource_type, resource_id, \
         trace_id, result, digest, details, stored, source) \
         SELECT id, ts, tenant, project, kind, actor, 'run', run, trace, result, \
                encode(sha256(convert_to(id::text, 'UTF8')), 'hex'), details, \
                jsonb_build_object('specversion', '1.0', 'id', id, 'source', 'keel/' || split_part(kind, '.', 1), \
                  'type', 'keel.' || kind || '.v1', 'subject', 'run/' || run, 'time', ts, \
                  'datacontenttype', 'application/json', 'tenantid', tenant, 'actor', actor, \
                  'traceparent', '00-' || trace || '-00f067aa0ba902b7-01', 'aggregatetype', 'run', \
                  'aggregateid', run, 'sequence', g, 'data', details), 'events' \
         FROM (SELECT g, gen_random_uuid() AS id, to_timestamp($1 + g * $2) AS ts, \
                      ($3::text[])[1 + g % cardinality($3::text[])] AS tenant, \
                      'p' || (g % 7) AS project, ($4::text[])[1 + (g / 7) % cardinality($4::text[])] AS kind, \
                      'user:u' || (g % 50) AS actor, 'run-' || (g % 5000) AS run, md5(g::text) AS trace, \
                      CASE WHEN g % 53 = 0 THEN 'failure' ELSE 'success' END AS result, \
                      jsonb_build_object('project_id', 'p' || (g % 7), 'step', g, 'detail', repeat('x', 160)) AS details \
               FROM generate_series($5::bigint, $6::bigint) g) s"
    )
}

pub async fn load(w: &World, rows: u64) -> Result<()> {
    println!("\n== query: bulk-loading {rows} rows over {TENANTS} tenants and the last {DAYS} days ==");
    let table = w.live_table().await?;
    ddl::check_name(&table)?;
    {
        let mut conn = w.db.acquire().await?;
        ddl::ensure_partitions(&mut conn, &table, -2, 0).await?;
    }
    let span = (DAYS * 86_400) as f64;
    let start = (Utc::now() - TimeDelta::minutes(1)).timestamp() as f64 - span;
    let step = span / rows.max(1) as f64;
    let tenants: Vec<String> = w.tenants.iter().map(|(id, _)| id.clone()).collect();
    let kinds: Vec<String> = KINDS.iter().map(|k| (*k).to_owned()).collect();
    let (sql, loaded, began) = (load_sql(&table), AtomicU64::new(0), Instant::now());
    let chunks = (0..rows)
        .step_by(CHUNK as usize)
        .map(|a| (a, (a + CHUNK).min(rows) - 1));
    let results: Vec<Result<()>> = futures::stream::iter(chunks)
        .map(|(a, b)| {
            let (sql, tenants, kinds, loaded) = (&sql, &tenants, &kinds, &loaded);
            async move {
                sqlx::query(sql)
                    .bind(start)
                    .bind(step)
                    .bind(tenants)
                    .bind(kinds)
                    .bind(a as i64)
                    .bind(b as i64)
                    .execute(&w.db)
                    .await?;
                let done = loaded.fetch_add(b - a + 1, Ordering::Relaxed) + b - a + 1;
                let secs = began.elapsed().as_secs_f64();
                eprintln!(
                    "  loaded {done}/{rows} rows in {secs:.0}s ({:.0} rows/s)",
                    done as f64 / secs
                );
                Ok(())
            }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let load_secs = began.elapsed().as_secs_f64();
    let vacuum = Instant::now();
    sqlx::raw_sql(&format!("VACUUM (ANALYZE) {table}"))
        .execute(&w.db)
        .await?;
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&w.db)
        .await?;
    let (size, buffers): (String, String) = sqlx::query_as(&format!(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))::bigint), current_setting('shared_buffers') \
         FROM pg_inherits WHERE inhparent = '{table}'::regclass"
    ))
    .fetch_one(&w.db)
    .await?;
    println!(
        "loaded {rows} rows in {load_secs:.0}s ({:.0} rows/s, 2 connections); VACUUM ANALYZE {:.0}s; \
         {table} now holds {count} rows ({size} with indexes; shared_buffers {buffers}); load {}",
        rows as f64 / load_secs,
        vacuum.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

/// A random tenant and a random whole hour of the last 30 days.
fn pick(now: DateTime<Utc>) -> (usize, DateTime<Utc>) {
    let hours = rand::random_range(1..=DAYS * 24);
    (rand::random_range(0..TENANTS), now - TimeDelta::hours(hours))
}

pub async fn run(w: &World, n: usize) -> Result<Query> {
    let channel = w.channel().await?;
    let clients: Vec<_> = w
        .tenants
        .iter()
        .map(|(_, token)| World::client(&channel, token))
        .collect();
    let mut health = HealthClient::new(channel.clone());
    let (table, generation): (String, i32) =
        sqlx::query_as("SELECT live_table, generation FROM timeline_state WHERE id = 1")
            .fetch_one(&w.db)
            .await?;
    let store = TimelineStore {
        pool: w.db.clone(),
        tail_pool: w.db.clone(),
        live: Live::fixed(table, generation),
    };
    let now = Utc::now().duration_trunc(TimeDelta::hours(1))?;
    let mut lat: [Vec<Duration>; 4] = Default::default();
    let (mut rows, mut full) = ([0usize; 2], [0usize; 2]);
    for i in 0..WARM_UP + n {
        let record = i >= WARM_UP;
        for (k, hours) in [1i64, 2].into_iter().enumerate() {
            let (t, from) = pick(now);
            let req = pb::QueryTimelineRequest {
                tenant_id: w.tenants[t].0.clone(),
                from: timestamp(from),
                to: timestamp(from + TimeDelta::hours(hours)),
                page: Some(pb::PageRequest {
                    page_size: 100,
                    page_token: String::new(),
                }),
                ..Default::default()
            };
            let start = Instant::now();
            let page = clients[t].clone().query_timeline(req).await?.into_inner();
            if record {
                lat[k].push(start.elapsed());
                rows[k] += page.events.len();
                full[k] += usize::from(page.page.is_some_and(|p| !p.next_page_token.is_empty()));
            }
        }
        let (t, from) = pick(now);
        let range = TimeRange {
            from,
            to: from + TimeDelta::hours(1),
        };
        let start = Instant::now();
        store
            .query(&w.tenants[t].0, range, &Filter::default(), None, 101)
            .await?;
        let in_process = start.elapsed();
        let start = Instant::now();
        health.check(HealthCheckRequest::default()).await?;
        if record {
            lat[2].push(in_process);
            lat[3].push(start.elapsed());
        }
    }
    let [grpc, grpc2, sql, check] = lat.map(Dist::new);
    let per_page = |k: usize| rows[k] as f64 / n.max(1) as f64;
    println!(
        "{n} calls each at concurrency 1 after {WARM_UP} unrecorded, interleaved, random tenant and hour; load {}",
        loadavg()
    );
    println!(
        "QueryTimeline, 1 h window, page of 100      {}  ({:.1} rows/page, {} full)",
        grpc.line(),
        per_page(0),
        full[0]
    );
    println!(
        "QueryTimeline, 2 h window, page of 100      {}  ({:.1} rows/page, {} full)",
        grpc2.line(),
        per_page(1),
        full[1]
    );
    println!("same 1 h query in-process (RLS transaction) {}", sql.line());
    println!("grpc.health.v1 Check (transport only)       {}", check.line());
    println!(
        "QueryTimeline p95 / in-process p95 = {:.2}; QueryTimeline p95 / health Check p95 = {:.1}",
        grpc.ms(95.0) / sql.ms(95.0),
        grpc.ms(95.0) / check.ms(95.0)
    );
    Ok(Query {
        grpc_p95: grpc.ms(95.0),
        store_p95: sql.ms(95.0),
        health_p95: check.ms(95.0),
    })
}
