//! Wiring: store, projections, retention, auth, gRPC and HTTP. `main.rs` only calls [`run`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_auth::{AuthConfig, AuthLayer, JwksCache};
use keel_bus::Bus;
use keel_proto::v1::timeline_service_server::TimelineServiceServer;
use keel_runtime::{Health, Service};
use prometheus::{IntCounterVec, Opts};
use tokio_util::sync::CancellationToken;

use crate::api::TimelineApi;
use crate::indexer::Indexer;
use crate::store::{TimelineStore, ddl};

const GRPC_SERVICES: &[&str] = &["keel.v1.TimelineService"];

pub async fn run(rt: Service) -> anyhow::Result<()> {
    let config = rt.config.clone();
    let schema = config.setting("schema").unwrap_or("timeline").to_owned();
    // The timeline keeps no event store of its own; keel-store gives the schema and pool.
    let base = keel_store::Store::connect(&config.database_url, &schema, "timeline")
        .await
        .context("database")?;
    keel_store::migrate(base.pool(), sqlx::migrate!("./migrations"))
        .await
        .context("timeline migrations")?;
    let store = TimelineStore::open(base.pool().clone()).await?;
    let nats = rt.connect_nats().await?;
    let bus = Bus::new(nats.clone(), &config.bus_prefix)?;
    bus.ensure_streams().await.context("JetStream streams")?;

    let malformed = IntCounterVec::new(
        Opts::new(
            "keel_timeline_malformed_total",
            "Messages the timeline could not read, sent to KEEL_DLQ.",
        ),
        &["source"],
    )?;
    rt.metrics().registry().register(Box::new(malformed.clone()))?;
    let shutdown = rt.shutdown();
    let indexer = Arc::new(Indexer::new(
        store.clone(),
        bus.clone(),
        shutdown.token(),
        malformed,
    ));
    indexer.start().await;
    let retention_every = Duration::from_secs(
        config
            .setting_parsed::<u64>("retention_interval_secs")?
            .unwrap_or(3600),
    );
    tokio::spawn(maintain(store.clone(), retention_every, shutdown.token()));

    let (grpc_listener, _) = keel_runtime::grpc::bind(config.grpc_addr).await?;
    let (http_listener, _) = keel_runtime::grpc::bind(config.http_addr).await?;
    let jwks = Arc::new(JwksCache::from_env(keel_auth::jwks::DEFAULT_URL));
    let auth = AuthConfig::standard(jwks, &config.redis_url, rt.metrics()).await;
    let (health_svc, reflection) = rt
        .grpc_health_and_reflection(keel_proto::FILE_DESCRIPTOR_SET, GRPC_SERVICES)
        .await?;
    let api = TimelineApi {
        indexer: indexer.clone(),
        bus: bus.clone(),
        shutdown: shutdown.token(),
    };
    let router = keel_runtime::grpc::grpc_server_builder()
        .layer(keel_runtime::RequestLogLayer::new("timeline", rt.metrics()))
        .layer(AuthLayer::new(auth))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(TimelineServiceServer::new(api));
    let health = Health::new()
        .with_postgres(store.pool.clone())
        .with_nats(nats)
        .with_redis(keel_runtime::health::redis_lazy(&config.redis_url)?);
    let lag_gauge = rt.metrics().consumer_lag().clone();
    let lag_indexer = indexer.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Ok(lag) = lag_indexer.lag().await {
                lag_gauge
                    .with_label_values(&["timeline"])
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
    });
    rt.serve_on(grpc_listener, http_listener, router, health, axum::Router::new())
        .await?;
    indexer.stop().await;
    Ok(())
}

/// Partitions ahead of need, and retention, on a schedule.
async fn maintain(store: TimelineStore, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (table, _) = store.live.get();
        if let Ok(mut conn) = store.pool.acquire().await
            && let Err(e) = ddl::ensure_partitions(&mut conn, &table, 0, 2).await
        {
            tracing::warn!(error = %e, "partition maintenance failed");
        }
        match store.sweep_retention().await {
            Ok(s) => {
                tracing::info!(rows = s.rows_deleted, partitions = ?s.partitions_dropped, "retention sweep")
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }
}
