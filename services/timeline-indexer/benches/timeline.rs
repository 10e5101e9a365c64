//! `cargo bench -p keel-timeline --bench timeline`: what the timeline indexer sustains, printed
//! beside the raw limits that bound it, so each figure can be read as a ratio. Asserts nothing.
//!
//! Starts the real release `keel-tenant` (JWKS, tokens, 100 business-tier tenants) and
//! `keel-timeline` binaries on free ports, on one fresh bus namespace with fresh schemas, against
//! the local PostgreSQL, NATS and Redis, then measures (see each module for exactly what):
//! - [`ingest`]: the projection draining a pre-filled KEEL_EVENTS (events/s), beside JetStream
//!   read+ack alone and multi-row INSERTs of 1000 into the same table shape;
//! - [`latency`]: append commit in a producer's event store → visible through GetEvent, at a
//!   steady 2,000 events/s, beside commit → on the stream (the relay's share);
//! - [`query`]: QueryTimeline for a one-hour page of 100 on ≥ 5 million rows over 100 tenants,
//!   beside the same SQL in-process and a bare gRPC health Check.
//!
//! Settings: KEEL_BENCH_EVENTS (100000) pre-filled events, KEEL_BENCH_SECONDS (30) of steady
//! appends, KEEL_BENCH_SAMPLE_EVERY (100) appends per latency sample, KEEL_BENCH_QUERY_ROWS
//! (5000000) bulk-loaded rows, KEEL_BENCH_QUERIES (500) calls per query figure.

#[path = "timeline/ingest.rs"]
mod ingest;
#[path = "timeline/latency.rs"]
mod latency;
#[path = "timeline/query.rs"]
mod query;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use keel_bus::Bus;
use keel_e2e::{Bearer, ServiceProc};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use keel_store::testing::{database_url, unique_token};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub const TENANTS: usize = 100;
/// base64 of 32 bytes of 42: a throwaway tenant schema's master key (as the tenant bench).
const MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

pub type Timeline = TimelineServiceClient<InterceptedService<Channel, Bearer>>;

pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Sorted samples; nearest-rank percentiles in milliseconds.
pub struct Dist(Vec<Duration>);

impl Dist {
    pub fn new(mut xs: Vec<Duration>) -> Self {
        xs.sort_unstable();
        Dist(xs)
    }

    pub fn ms(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0
            .get(rank.clamp(1, self.0.len().max(1)) - 1)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    pub fn line(&self) -> String {
        format!(
            "n={:<6} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.0.len(),
            self.ms(50.0),
            self.ms(95.0),
            self.ms(99.0),
            self.ms(100.0)
        )
    }
}

pub fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split(' ').take(3).collect::<Vec<_>>().join(" ")
}

/// The two services, the bus namespace they share, and the bench's own handles on them.
pub struct World {
    pub namespace: String,
    pub tenant: ServiceProc,
    pub timeline: Option<ServiceProc>,
    pub timeline_schema: String,
    pub bus: Bus,
    /// A pool whose search_path is the timeline's schema (the bench's direct SQL).
    pub db: PgPool,
    pub operator: String,
    /// (tenant id, `timeline:read` token of that tenant)
    pub tenants: Vec<(String, String)>,
    tenant_channel: Channel,
}

/// `keel_e2e::binary`, or, where that fails, `cargo build -p <package>`: a plain `cargo build
/// --bin` run from this package's directory sees only this package's binaries.
fn sibling_binary(package: &str) -> Result<PathBuf> {
    if let Ok(path) = keel_e2e::binary(package) {
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("no target dir")?;
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", package, "--bin", package]);
    if dir.file_name().is_some_and(|d| d == "release") {
        cmd.arg("--release");
    }
    anyhow::ensure!(cmd.status()?.success(), "building {package} failed");
    Ok(dir.join(package))
}

impl World {
    pub async fn start() -> Result<World> {
        let namespace = unique_token();
        let bootstrap = format!("boot-{}", uuid::Uuid::new_v4());
        let env = HashMap::from([
            ("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.clone()),
            ("KEEL_MASTER_KEY".to_owned(), MASTER_KEY.to_owned()),
            ("KEEL_LOG".to_owned(), "warn".to_owned()),
        ]);
        let binary = sibling_binary("keel-tenant")?;
        let tenant_schema = format!("bench_{namespace}_t");
        let tenant = ServiceProc::start(&binary, "tenant", &tenant_schema, &namespace, &env).await?;
        let bus = keel_store::testing::bus(&namespace).await?;
        bus.ensure_streams().await?;
        let timeline_schema = format!("bench_{namespace}_l");
        let options: PgConnectOptions = database_url().parse()?;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", timeline_schema.as_str())]))
            .await?;
        let tenant_channel = tenant.channel().await?;
        let mut world = World {
            namespace,
            tenant,
            timeline: None,
            timeline_schema,
            bus,
            db,
            operator: String::new(),
            tenants: Vec::new(),
            tenant_channel,
        };
        let boot = TokenServiceClient::new(world.tenant_channel.clone())
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: bootstrap,
                scopes: vec![],
            })
            .await?
            .into_inner();
        // ExchangeApiKey's tokens last 15 minutes; the bulk load alone may take longer.
        world.operator = boot.token;
        world.operator = world.issue("*", boot.scopes).await?;
        let w = &world;
        let made = futures::stream::iter(0..TENANTS)
            .map(|i| w.create_tenant(i))
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        world.tenants = made.into_iter().collect::<Result<_>>()?;
        Ok(world)
    }

    async fn issue(&self, tenant_id: &str, scopes: Vec<String>) -> Result<String> {
        let mut tokens = TokenServiceClient::with_interceptor(
            self.tenant_channel.clone(),
            Bearer(Some(self.operator.clone())),
        );
        let req = pb::IssueTokenRequest {
            tenant_id: tenant_id.into(),
            subject: "bench".into(),
            scopes,
            ttl_seconds: 6 * 3600,
        };
        Ok(tokens.issue_token(req).await?.into_inner().token)
    }

    async fn create_tenant(&self, i: usize) -> Result<(String, String)> {
        let slug = format!("bench-{}-{i}", &self.namespace[1..9]);
        let req = pb::CreateTenantRequest {
            name: format!("Bench {i}"),
            slug: slug.clone(),
            tier: pb::Tier::Business as i32,
            owner_email: format!("owner{i}@example.com"),
            request_id: slug,
        };
        let bearer = Bearer(Some(self.operator.clone()));
        let mut tenants = TenantServiceClient::with_interceptor(self.tenant_channel.clone(), bearer);
        let id = tenants.create_tenant(req).await?.into_inner().id;
        let token = self
            .issue(&id, vec![keel_auth::scopes::TIMELINE_READ.into()])
            .await?;
        Ok((id, token))
    }

    pub async fn start_timeline(&mut self) -> Result<()> {
        let env = HashMap::from([
            (
                "KEEL_JWKS_URL".to_owned(),
                format!("{}/.well-known/jwks.json", self.tenant.http_url()),
            ),
            ("KEEL_LOG".to_owned(), "warn".to_owned()),
        ]);
        let binary = Path::new(env!("CARGO_BIN_EXE_keel-timeline"));
        let proc = ServiceProc::start(binary, "timeline", &self.timeline_schema, &self.namespace, &env)
            .await
            .context("starting keel-timeline")?;
        self.timeline = Some(proc);
        Ok(())
    }

    pub async fn channel(&self) -> Result<Channel> {
        self.timeline
            .as_ref()
            .context("keel-timeline is not running")?
            .channel()
            .await
    }

    pub fn client(channel: &Channel, token: &str) -> Timeline {
        TimelineServiceClient::with_interceptor(channel.clone(), Bearer(Some(token.to_owned())))
    }

    pub async fn live_table(&self) -> Result<String> {
        Ok(
            sqlx::query_scalar("SELECT live_table FROM timeline_state WHERE id = 1")
                .fetch_one(&self.db)
                .await?,
        )
    }

    /// How the runner batched the rows matching `filter`: a batch is one transaction, so its rows
    /// share a tx_id. Returns the row count and a description.
    pub async fn runner_batches(&self, filter: &str) -> Result<(i64, String)> {
        let table = self.live_table().await?;
        keel_timeline::store::ddl::check_name(&table)?;
        let (rows, txs, p50, p90, max): (i64, i64, i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT coalesce(sum(n), 0)::bigint, count(*), \
                    coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY n), 0), \
                    coalesce(percentile_disc(0.9) WITHIN GROUP (ORDER BY n), 0), coalesce(max(n), 0) \
             FROM (SELECT count(*) AS n FROM {table} WHERE {filter} GROUP BY tx_id) b"
        ))
        .fetch_one(&self.db)
        .await?;
        let mean = rows as f64 / txs.max(1) as f64;
        Ok((
            rows,
            format!(
                "{rows} rows in {txs} runner transactions (rows each: mean {mean:.1}, p50 {p50}, p90 {p90}, max {max})"
            ),
        ))
    }

    async fn cleanup(mut self, extra_schemas: &[String]) -> Result<()> {
        if let Some(mut p) = self.timeline.take() {
            let _ = p.terminate().await;
        }
        let _ = self.tenant.terminate().await;
        let schemas = [self.timeline_schema.clone(), self.tenant.schema.clone()];
        for schema in schemas.iter().chain(extra_schemas) {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&self.db)
                .await?;
        }
        self.bus.delete_streams().await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "keel-timeline bench: {cores} cores shared by this client, both services, PostgreSQL and NATS; load {}",
        loadavg()
    );
    let mut world = World::start().await.context("starting keel-tenant")?;
    let producer_schema = format!("bench_{}_p", world.namespace);
    let result = measure(&mut world, &producer_schema).await;
    if let Err(e) = &result {
        eprintln!("bench failed: {e:#}");
        if let Some(p) = &world.timeline {
            eprintln!("keel-timeline logs:\n{}", p.logs());
        }
    }
    world.cleanup(&[producer_schema]).await?;
    result
}

async fn measure(world: &mut World, producer_schema: &str) -> Result<()> {
    let events = setting("KEEL_BENCH_EVENTS", 100_000);
    let ingest = ingest::run(world, events).await?;
    let latency = latency::run(
        world,
        producer_schema,
        Duration::from_secs(setting("KEEL_BENCH_SECONDS", 30)),
        setting("KEEL_BENCH_SAMPLE_EVERY", 100).max(1),
    )
    .await?;
    query::load(world, setting("KEEL_BENCH_QUERY_ROWS", 5_000_000)).await?;
    let query = query::run(world, setting("KEEL_BENCH_QUERIES", 500) as usize).await?;

    println!("\n== summary (load {}) ==", loadavg());
    println!(
        "{:<34} {:>10} {:>10}  raw limit in the same run (measured / limit)",
        "figure", "measured", "target"
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "{:<34} {:>10.0} {:>10}  INSERT×1000 {:.0} rows/s ({:.2}); JetStream read+ack {:.0}/s ({:.2})  [{}]",
        "ingest, events/s",
        ingest.rate,
        "≥ 30000",
        ingest.raw_insert,
        ingest.rate / ingest.raw_insert,
        ingest.bus_read,
        ingest.rate / ingest.bus_read,
        verdict(ingest.rate >= 30_000.0)
    );
    println!(
        "{:<34} {:>10.1} {:>10}  commit→on stream p99 {:.1} ms ({:.2}); GetEvent p50 {:.2} ms  [{}]",
        "append→visible p99, ms",
        latency.visible_p99,
        "< 100",
        latency.stream_p99,
        latency.visible_p99 / latency.stream_p99,
        latency.get_p50,
        verdict(latency.visible_p99 < 100.0)
    );
    println!(
        "{:<34} {:>10.2} {:>10}  same SQL in-process p95 {:.2} ms ({:.2}); health Check p95 {:.2} ms ({:.1})  [{}]",
        "QueryTimeline 1 h page p95, ms",
        query.grpc_p95,
        "< 20",
        query.store_p95,
        query.grpc_p95 / query.store_p95,
        query.health_p95,
        query.grpc_p95 / query.health_p95,
        verdict(query.grpc_p95 < 20.0)
    );
    Ok(())
}
