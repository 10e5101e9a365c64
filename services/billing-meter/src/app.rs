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

use crate::api::MeterApi;
use crate::ingest::UsageIngest;
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "billing".into(),
            lateness_days: 35,
            window_grace_secs: 300,
            aggregate_every_ms: 1000,
            crash_after_windows: 0,
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
    let mut mesh = Assembly::start(rt).await?;
    let (db, store) = mesh
        .event_sourced(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;

    let mut usage = ProjectionConfig::new(StreamKind::Usage);
    usage.filter_subject = "keel.usage.>".into();
    usage.batch_size = 1000;
    mesh.project(db.pool().clone(), UsageIngest { lateness }, usage);

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

    let api = MeterApi {
        pool: db.pool().clone(),
        meters: store.framework(()),
        audit: mesh.audit_log()?,
        lateness,
    };
    let auth = mesh.auth(None).await?;
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(MeterServiceServer::new(api));
    mesh.serve(router, axum::Router::new()).await
}
