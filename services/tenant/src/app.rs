//! Wiring: store, relay, projection, auth, gRPC and HTTP. `main.rs` only calls [`run`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cqrs_es::persist::PersistedEventStore;
use keel_auth::{AuthConfig, AuthLayer, JwksCache};
use keel_bus::audit::{AuditRecord, AuditResult, PLATFORM_TENANT};
use keel_bus::{Bus, StreamKind};
use keel_proto::v1::license_service_server::LicenseServiceServer;
use keel_proto::v1::tenant_service_server::TenantServiceServer;
use keel_proto::v1::token_service_server::TokenServiceServer;
use keel_runtime::{Health, Service};
use keel_store::Store;
use keel_store::projection::{ProjectionConfig, ProjectionRunner};
use keel_store::relay::Relay;

use crate::api::{Core, LicenseApi, TenantApi, TokenApi};
use crate::crypto::{DataKeys, MasterKey};
use crate::projection::TenantsView;
use crate::signing::SigningKeys;
use crate::tokens::ApiKeys;

const GRPC_SERVICES: &[&str] = &[
    "keel.v1.TenantService",
    "keel.v1.LicenseService",
    "keel.v1.TokenService",
];

pub async fn run(rt: Service) -> anyhow::Result<()> {
    let config = rt.config.clone();
    let schema = config.setting("schema").unwrap_or("tenant").to_owned();
    let store = Store::connect(&config.database_url, &schema, "tenant")
        .await
        .context("event store")?;
    keel_store::migrate(store.pool(), sqlx::migrate!("./migrations"))
        .await
        .context("tenant migrations")?;
    let nats = rt.connect_nats().await?;
    let bus = Bus::new(nats.clone(), &config.bus_prefix)?;
    bus.ensure_streams().await.context("JetStream streams")?;

    let master = MasterKey::from_setting(config.setting("master_key"))?;
    let signing = SigningKeys::new(store.pool().clone(), master.clone());
    signing.active().await.context("signing key")?;
    let api_keys = ApiKeys::new(store.pool().clone());
    match std::env::var("KEEL_BOOTSTRAP_TOKEN") {
        Ok(token) if !token.trim().is_empty() => api_keys
            .bootstrap(token.trim())
            .await
            .context("bootstrap token")?,
        _ => tracing::info!("KEEL_BOOTSTRAP_TOKEN not set: no bootstrap operator key"),
    }
    let core = Arc::new(Core {
        cqrs: store.framework(()),
        loader: PersistedEventStore::new_event_store(store.repository()),
        data_keys: DataKeys::new(store.pool().clone(), master),
        signing: signing.clone(),
        api_keys,
        bus: bus.clone(),
        store: store.clone(),
    });

    let shutdown = rt.shutdown();
    let relay = Relay::spawn(&store, bus.clone(), shutdown.token());
    let mut view = ProjectionConfig::new(StreamKind::Events);
    view.filter_subject = "keel.evt.*.tenant.>".into();
    let projection =
        ProjectionRunner::new(store.pool().clone(), bus.clone(), TenantsView, view).spawn(shutdown.token());

    let (grpc_listener, _) = keel_runtime::grpc::bind(config.grpc_addr).await?;
    let (http_listener, http_addr) = keel_runtime::grpc::bind(config.http_addr).await?;
    // The tenant service verifies against its own JWKS endpoint unless told otherwise.
    let jwks = Arc::new(JwksCache::from_env(&format!(
        "http://{http_addr}/.well-known/jwks.json"
    )));
    tokio::spawn(report_degraded(jwks.clone(), bus.clone(), shutdown.token()));
    let auth = AuthConfig::standard(jwks, &config.redis_url, rt.metrics())
        .await
        .with_public_path("/keel.v1.TokenService/ExchangeApiKey");

    let (health_svc, reflection) = rt
        .grpc_health_and_reflection(keel_proto::FILE_DESCRIPTOR_SET, GRPC_SERVICES)
        .await?;
    let router = keel_runtime::grpc::grpc_server_builder()
        .layer(keel_runtime::RequestLogLayer::new("tenant", rt.metrics()))
        .layer(AuthLayer::new(auth))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(TenantServiceServer::new(TenantApi(core.clone())))
        .add_service(LicenseServiceServer::new(LicenseApi(core.clone())))
        .add_service(TokenServiceServer::new(TokenApi(core.clone())));
    let health = Health::new()
        .with_postgres(store.pool().clone())
        .with_nats(nats)
        .with_redis(keel_runtime::health::redis_lazy(&config.redis_url)?);
    let http = axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks_handler))
        .with_state(signing);

    rt.serve_on(grpc_listener, http_listener, router, health, http)
        .await?;
    relay.join().await?;
    projection.await??;
    Ok(())
}

async fn jwks_handler(State(signing): State<SigningKeys>) -> Response {
    match signing.jwks().await {
        Ok(set) => ([("cache-control", "max-age=60")], Json(set)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "JWKS unavailable");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `auth.degraded`: an audit record each time verification falls back to cached keys.
async fn report_degraded(jwks: Arc<JwksCache>, bus: Bus, shutdown: tokio_util::sync::CancellationToken) {
    let mut was = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jwks.is_degraded();
        if now != was {
            let (action, result) = if now {
                ("auth-degraded", AuditResult::Failed)
            } else {
                ("auth-recovered", AuditResult::Success)
            };
            let record = AuditRecord::new(
                "service:tenant",
                PLATFORM_TENANT,
                "tenant",
                action,
                "jwks/signing-keys",
                result,
                "127.0.0.1",
            )
            .with_reason(now.then(|| "JWKS endpoint unreachable; verifying with cached keys".into()));
            if now {
                tracing::warn!("auth.degraded: JWKS unreachable, serving from cache");
            }
            if bus.publish_audit(&record).await.is_ok() {
                was = now;
            }
        }
    }
}
