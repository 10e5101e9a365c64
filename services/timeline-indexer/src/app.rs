//! The timeline's table of contents: its settings, its store, the indexer (the projections of
//! KEEL_EVENTS and KEEL_AUDIT), retention, and the API. Everything else is the shared assembly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use keel_proto::v1::timeline_service_server::TimelineServiceServer;
use keel_runtime::Service;
use keel_service::Assembly;
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::{TailSlots, TimelineApi};
use crate::indexer::Indexer;
use crate::rebuild::Rebuilds;
use crate::store::{TimelineStore, ddl};

const GRPC_SERVICES: &[&str] = &["keel.v1.TimelineService"];

/// `KEEL_TIMELINE_*` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `KEEL_TIMELINE_SCHEMA`: the PostgreSQL schema the service owns.
    pub schema: String,
    /// `KEEL_TIMELINE_RETENTION_INTERVAL_SECS`: how often partitions and retention are kept up.
    pub retention_interval_secs: u64,
    /// `KEEL_TIMELINE_MAX_TAILS_PER_TENANT`: open tails one tenant may hold at once.
    pub max_tails_per_tenant: usize,
    /// `KEEL_TIMELINE_TAIL_POOL_SIZE`: PostgreSQL connections the open tails share (apart from
    /// ingest's and queries').
    pub tail_pool_size: u32,
    /// `KEEL_TIMELINE_TAIL_FALLBACK_SECS`: an idle tail reads again after this many seconds
    /// even without a wake-up from the projection.
    pub tail_fallback_secs: u64,
    /// `KEEL_TIMELINE_REBUILD_LEASE_SECS`: a rebuild job whose replica stopped renewing its
    /// lease for this long is resumed by another (or by the same one restarted).
    pub rebuild_lease_secs: u64,
    /// `KEEL_TIMELINE_GENERATION_POLL_MS`: how often a replica checks which generation is live
    /// (after another replica swapped a rebuild in, it switches within this).
    pub generation_poll_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "timeline".into(),
            retention_interval_secs: 3600,
            max_tails_per_tenant: 32,
            tail_pool_size: 8,
            tail_fallback_secs: 5,
            rebuild_lease_secs: 15,
            generation_poll_ms: 1000,
        }
    }
}

pub async fn run(rt: Service, settings: Settings) -> anyhow::Result<()> {
    let mut mesh = Assembly::start(rt).await?;
    // The timeline keeps no event store: its database has no `events` table.
    let db = mesh
        .database(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;
    // Tails read on a pool of their own: ingest and queries keep their connections.
    let tail_pool = keel_store::Database::connect(
        &mesh.config().database_url,
        &settings.schema,
        settings.tail_pool_size,
    )
    .await
    .context("the tails' database pool")?;
    let store = TimelineStore::open(db.pool().clone())
        .await?
        .with_tail_pool(tail_pool.pool().clone());

    let malformed = IntCounterVec::new(
        Opts::new(
            "keel_timeline_malformed_total",
            "Messages the timeline could not read, sent to KEEL_DLQ.",
        ),
        &["source"],
    )?;
    mesh.metrics().registry().register(Box::new(malformed.clone()))?;
    let indexer = Arc::new(Indexer::new(
        store.clone(),
        mesh.bus().clone(),
        mesh.stop_token(),
        malformed,
    ));
    indexer.start().await;
    // The indexer's consumers: while both run this worker runs, so readiness sees them.
    let (stop, watched) = (mesh.stop_token(), indexer.clone());
    mesh.spawn("indexer consumers", async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !watched.alive().await {
                watched.stop().await;
                anyhow::bail!("a timeline consumer stopped");
            }
        }
        watched.stop().await;
        Ok(())
    });
    let (follower, poll) = (
        indexer.clone(),
        Duration::from_millis(settings.generation_poll_ms.max(50)),
    );
    mesh.spawn("live generation", async move {
        follower.follow_until_shutdown(poll).await
    });
    let rebuilds = Arc::new(Rebuilds::new(
        indexer.clone(),
        Duration::from_secs(settings.rebuild_lease_secs.max(1)),
    ));
    mesh.spawn("rebuild jobs", rebuilds.clone().work(mesh.stop_token()));
    let every = Duration::from_secs(settings.retention_interval_secs.max(1));
    mesh.spawn("retention", maintain(store, every, mesh.stop_token()));
    mesh.spawn(
        "consumer lag",
        report_lag(indexer.clone(), mesh.metrics(), mesh.stop_token()),
    );

    let tails = Arc::new(TailSlots::new(settings.max_tails_per_tenant.max(1)));
    mesh.spawn(
        "tail notifications",
        crate::tails::listen(
            tail_pool.pool().clone(),
            settings.schema.clone(),
            tails.clone(),
            mesh.stop_token(),
        ),
    );
    let auth = mesh.auth(None).await?;
    let api = TimelineApi {
        indexer,
        rebuilds,
        audit: mesh.audit_log()?,
        shutdown: mesh.stop_token(),
        tails: tails.clone(),
        tail_fallback: Duration::from_secs(settings.tail_fallback_secs.max(1)),
    };
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(TimelineServiceServer::new(api));
    mesh.serve(router, axum::Router::new()).await
}

/// `keel_consumer_lag{consumer="timeline"}` every 5 s.
async fn report_lag(
    indexer: Arc<Indexer>,
    metrics: keel_runtime::Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let gauge = metrics.consumer_lag().with_label_values(&["timeline"]);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Ok(lag) = indexer.lag().await {
            gauge.set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
    }
}

/// Partitions ahead of need, and retention, on a schedule.
async fn maintain(store: TimelineStore, every: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
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
