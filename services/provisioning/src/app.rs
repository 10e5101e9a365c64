//! Wiring: store, relay, triggers, the saga executor, auth, gRPC and HTTP.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cqrs_es::persist::PersistedEventStore;
use keel_auth::{AuthConfig, AuthLayer, JwksCache};
use keel_bus::{Bus, StreamKind};
use keel_proto::v1::provisioning_service_server::ProvisioningServiceServer;
use keel_runtime::{Health, Service};
use keel_store::Store;
use keel_store::projection::{ProjectionConfig, ProjectionRunner};
use keel_store::relay::Relay;

use crate::api::ProvisioningApi;
use crate::domain::faults::Faults;
use crate::remote::TenantClient;
use crate::saga::Executor;
use crate::steps::Systems;
use crate::triggers::Triggers;

const GRPC_SERVICES: &[&str] = &["keel.v1.ProvisioningService"];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub async fn run(rt: Service) -> anyhow::Result<()> {
    let config = rt.config.clone();
    let schema = config.setting("schema").unwrap_or("provisioning").to_owned();
    let store = Store::connect(&config.database_url, &schema, "provisioning")
        .await
        .context("event store")?;
    keel_store::migrate(store.pool(), sqlx::migrate!("./migrations"))
        .await
        .context("provisioning migrations")?;
    let nats = rt.connect_nats().await?;
    let bus = Bus::new(nats.clone(), &config.bus_prefix)?;
    bus.ensure_streams().await.context("JetStream streams")?;

    let api_key = env("KEEL_PROVISIONING_API_KEY")
        .or_else(|| env("KEEL_BOOTSTRAP_TOKEN"))
        .context(
            "KEEL_PROVISIONING_API_KEY (or KEEL_BOOTSTRAP_TOKEN) must hold a key for the tenant service",
        )?;
    let tenant_url = env("KEEL_TENANT_ADDR").unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let faults = Faults::parse(config.setting("faults").unwrap_or_default()).map_err(anyhow::Error::msg)?;
    if faults != Faults::default() {
        tracing::warn!(faults = ?faults, "fault injection is on");
    }
    let systems = Systems {
        pg: store.pool().clone(),
        database_url: config.database_url.clone(),
        bus: bus.clone(),
        redis: rt.connect_redis().await?,
        gitops_dir: PathBuf::from(env("KEEL_GITOPS_DIR").unwrap_or_else(|| ".keel/gitops".into())),
        master: keel_tenant::crypto::MasterKey::from_setting(config.setting("master_key"))?,
    };
    let executor = Arc::new(Executor {
        cqrs: store.framework(()),
        loader: PersistedEventStore::new_event_store(store.repository()),
        store: store.clone(),
        systems,
        tenant: TenantClient::new(&tenant_url, api_key)?,
        faults,
        prefix: config.setting("resource_prefix").unwrap_or_default().to_owned(),
        steps: Executor::local_steps(),
        concurrency: config.setting_parsed::<usize>("concurrency")?.unwrap_or(64),
    });

    let shutdown = rt.shutdown();
    let relay = Relay::spawn(&store, bus.clone(), shutdown.token());
    let mut triggers = ProjectionConfig::new(StreamKind::Events);
    triggers.filter_subject = "keel.evt.*.tenant.>".into();
    let triggers =
        ProjectionRunner::new(store.pool().clone(), bus.clone(), Triggers, triggers).spawn(shutdown.token());
    let saga = tokio::spawn(executor.clone().run(shutdown.token()));

    let jwks = Arc::new(JwksCache::from_env(keel_auth::jwks::DEFAULT_URL));
    let auth = AuthConfig::standard(jwks, &config.redis_url, rt.metrics()).await;
    let (health_svc, reflection) = rt
        .grpc_health_and_reflection(keel_proto::FILE_DESCRIPTOR_SET, GRPC_SERVICES)
        .await?;
    let router = keel_runtime::grpc::grpc_server_builder()
        .layer(keel_runtime::RequestLogLayer::new("provisioning", rt.metrics()))
        .layer(AuthLayer::new(auth))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(ProvisioningServiceServer::new(ProvisioningApi {
            executor: executor.clone(),
        }));
    let health = Health::new()
        .with_postgres(store.pool().clone())
        .with_nats(nats)
        .with_redis(keel_runtime::health::redis_lazy(&config.redis_url)?);
    let (grpc_listener, _) = keel_runtime::grpc::bind(config.grpc_addr).await?;
    let (http_listener, _) = keel_runtime::grpc::bind(config.http_addr).await?;
    rt.serve_on(grpc_listener, http_listener, router, health, axum::Router::new())
        .await?;
    relay.join().await?;
    triggers.await??;
    saga.await?;
    Ok(())
}
