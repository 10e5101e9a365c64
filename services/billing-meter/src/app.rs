//! keel-billing's table of contents: its settings, its store (raw usage, windows, meters and
//! the event store their records live in), NATS ingest, the aggregator and the API. Everything
//! else is the shared assembly.

use std::sync::Arc;
use std::time::Duration;

use keel_bus::StreamKind;
use keel_proto::v1::meter_service_server::MeterServiceServer;
use keel_runtime::Service;
use keel_service::Assembly;
use keel_store::projection::ProjectionConfig;
use serde::{Deserialize, Serialize};

use anyhow::Context as _;

use crate::alerts::Alerts;
use crate::api::MeterApi;
use crate::export::{Exporter, QueueConfig};
use crate::ingest::UsageIngest;
use crate::prices::PriceTable;
use crate::tenants::TenantDirectory;
use crate::watch::Watcher;
use crate::windows::Aggregator;

const GRPC_SERVICES: &[&str] = &["keel.v1.MeterService"];

/// `KEEL_BILLING_*` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `KEEL_BILLING_SCHEMA`: the PostgreSQL schema the service owns.
    pub schema: String,
    /// `KEEL_BILLING_LATENESS_DAYS`: usage older than this is refused (35).
    pub lateness_days: i64,
    /// `KEEL_BILLING_WINDOW_GRACE_SECS`: how long after its hour a window waits for late
    /// events before it is first recorded (300); later events correct it.
    pub window_grace_secs: i64,
    /// `KEEL_BILLING_AGGREGATE_EVERY_MS`: how often the aggregator looks for due windows (1000).
    pub aggregate_every_ms: u64,
    /// `KEEL_BILLING_CRASH_AFTER_WINDOWS`: fault injection for the crash tests; the process
    /// exits right after recording this many windows, before clearing the last mark (0: off).
    pub crash_after_windows: u64,
    /// `KEEL_BILLING_SQS_ENDPOINT`: the SQS endpoint usage records are exported to (moto on
    /// 4576 locally); empty: AWS's for the region.
    pub sqs_endpoint: String,
    /// `KEEL_BILLING_SQS_REGION` (us-east-1).
    pub sqs_region: String,
    /// `KEEL_BILLING_SQS_QUEUE`: the FIFO queue's name (keel-usage-records.fifo), created if missing.
    pub sqs_queue: String,
    /// `KEEL_BILLING_PRICES_FILE`: the price table (JSON, see `prices.rs`); unset: the defaults.
    pub prices_file: Option<std::path::PathBuf>,
    /// `KEEL_BILLING_STALE_AFTER_SECS`: an ACTIVE tenant with no usage for longer is stale (3600).
    pub stale_after_secs: i64,
    /// `KEEL_BILLING_WATCH_EVERY_MS`: how often staleness and commitments are checked (30000).
    pub watch_every_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "billing".into(),
            lateness_days: 35,
            window_grace_secs: 300,
            aggregate_every_ms: 1000,
            crash_after_windows: 0,
            sqs_endpoint: "http://127.0.0.1:4576".into(),
            sqs_region: "us-east-1".into(),
            sqs_queue: "keel-usage-records.fifo".into(),
            prices_file: None,
            stale_after_secs: 3600,
            watch_every_ms: 30_000,
        }
    }
}

pub async fn run(rt: Service, settings: Settings) -> anyhow::Result<()> {
    if !(1..=400).contains(&settings.lateness_days) {
        anyhow::bail!("KEEL_BILLING_LATENESS_DAYS must be between 1 and 400");
    }
    if !(0..=86_400).contains(&settings.window_grace_secs) {
        anyhow::bail!("KEEL_BILLING_WINDOW_GRACE_SECS must be between 0 and 86400");
    }
    let lateness = chrono::Duration::days(settings.lateness_days);
    let prices = match &settings.prices_file {
        Some(path) => PriceTable::from_json(
            &std::fs::read_to_string(path)
                .with_context(|| format!("KEEL_BILLING_PRICES_FILE {}", path.display()))?,
        )
        .with_context(|| format!("KEEL_BILLING_PRICES_FILE {}", path.display()))?,
        None => PriceTable::default(),
    };
    let mut mesh = Assembly::start(rt).await?;
    let (db, store) = mesh
        .event_sourced(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;

    let mut usage = ProjectionConfig::new(StreamKind::Usage);
    usage.filter_subject = "keel.usage.>".into();
    usage.batch_size = 1000;
    mesh.project(db.pool().clone(), UsageIngest { lateness }, usage);

    let mut tenants = ProjectionConfig::new(StreamKind::Events);
    tenants.filter_subject = "keel.evt.*.tenant.>".into();
    mesh.project(db.pool().clone(), TenantDirectory, tenants);

    // Usage records to SQS, from the event store's outbox (relayed to KEEL_EVENTS); retried for
    // as long as the queue fails, never dead-lettered for an outage.
    let mut export = ProjectionConfig::new(StreamKind::Events);
    // All of billing's events, not only UsageRecorded: the consumer applies each window's events
    // in sequence, and a correction's UsageCorrected comes before its UsageRecorded.
    export.filter_subject = "keel.evt.*.billing.>".into();
    export.batch_size = 100;
    export.max_deliver = i64::MAX;
    let queue = QueueConfig {
        endpoint: settings.sqs_endpoint.clone(),
        region: settings.sqs_region.clone(),
        queue: settings.sqs_queue.clone(),
    };
    mesh.project(db.pool().clone(), Exporter::new(queue, db.pool().clone()), export);

    let aggregator = Arc::new(Aggregator::new(
        &store,
        chrono::Duration::seconds(settings.window_grace_secs),
        Duration::from_millis(settings.aggregate_every_ms.max(50)),
        settings.crash_after_windows,
    ));
    if settings.crash_after_windows > 0 {
        tracing::warn!(
            after = settings.crash_after_windows,
            "fault injection is on: the aggregator will crash"
        );
    }
    mesh.spawn("aggregator", aggregator.run(mesh.stop_token()));

    if settings.stale_after_secs < 1 {
        anyhow::bail!("KEEL_BILLING_STALE_AFTER_SECS must be at least 1");
    }
    let watcher = Arc::new(Watcher::new(
        &store,
        prices.clone(),
        chrono::Duration::seconds(settings.stale_after_secs),
        Duration::from_millis(settings.watch_every_ms.max(100)),
        mesh.metrics(),
    )?);
    mesh.spawn("watcher", watcher.run(mesh.stop_token()));
    let mut alerts = ProjectionConfig::new(StreamKind::Events);
    alerts.filter_subject = "keel.evt.*.billing.>".into();
    mesh.project(
        db.pool().clone(),
        Alerts {
            bus: mesh.bus().clone(),
        },
        alerts,
    );

    let api = MeterApi {
        pool: db.pool().clone(),
        meters: store.framework(()),
        audit: mesh.audit_log()?,
        lateness,
        prices,
        meter_cache: Default::default(),
    };
    let auth = mesh.auth(None).await?;
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(MeterServiceServer::new(api));
    mesh.serve(router, axum::Router::new()).await
}
