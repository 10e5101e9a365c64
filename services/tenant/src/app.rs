//! The tenant service's table of contents: its settings, its store and projection, its APIs and
//! its JWKS endpoint. Everything else is the shared assembly (`keel-service`).

use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cqrs_es::persist::PersistedEventStore;
use keel_bus::StreamKind;
use keel_proto::v1::license_service_server::LicenseServiceServer;
use keel_proto::v1::tenant_service_server::TenantServiceServer;
use keel_proto::v1::token_service_server::TokenServiceServer;
use keel_runtime::Service;
use keel_service::Assembly;
use keel_store::projection::ProjectionConfig;
use serde::{Deserialize, Serialize};

use crate::api::{Core, LicenseApi, TenantApi, TokenApi};
use crate::crypto::DataKeys;
use crate::projection::TenantsView;
use crate::signing::SigningKeys;
use crate::tokens::ApiKeys;

const GRPC_SERVICES: &[&str] = &[
    "keel.v1.TenantService",
    "keel.v1.LicenseService",
    "keel.v1.TokenService",
];

/// `KEEL_TENANT_*` settings (the master key and bootstrap key are shared: `KEEL_MASTER_KEY`,
/// `KEEL_BOOTSTRAP_TOKEN`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `KEEL_TENANT_SCHEMA`: the PostgreSQL schema the service owns.
    pub schema: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "tenant".into(),
        }
    }
}

pub async fn run(rt: Service, settings: Settings) -> anyhow::Result<()> {
    let mut mesh = Assembly::start(rt).await?;
    let (db, store) = mesh
        .event_sourced(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;

    let master = mesh.master_key().clone();
    let signing = SigningKeys::new(db.pool().clone(), master.clone());
    signing.active().await.context("signing key")?;
    let api_keys = ApiKeys::new(db.pool().clone());
    match mesh.config().bootstrap_token.as_deref() {
        Some(token) => api_keys.bootstrap(token).await.context("bootstrap token")?,
        None => tracing::info!("KEEL_BOOTSTRAP_TOKEN not set: no bootstrap operator key"),
    }
    let core = Arc::new(Core {
        cqrs: store.framework(()),
        loader: PersistedEventStore::new_event_store(store.repository()),
        data_keys: DataKeys::new(db.pool().clone(), master),
        signing: signing.clone(),
        api_keys,
        bus: mesh.bus().clone(),
        store: store.clone(),
        tables: crate::store::TenantTables::new(db.pool().clone()),
        exchange_limiter: Arc::new(keel_auth::RateLimiter::connect(&mesh.config().redis_url).await),
        limiter_scope: mesh.config().bus_prefix.clone(),
    });

    let mut view = ProjectionConfig::new(StreamKind::Events);
    view.filter_subject = "keel.evt.*.tenant.>".into();
    mesh.project(db.pool().clone(), TenantsView, view);

    // The tenant service verifies against its own JWKS endpoint unless told otherwise.
    let own_jwks = format!("http://{}/.well-known/jwks.json", mesh.http_addr());
    let auth = mesh
        .auth(&own_jwks)
        .await
        .with_public_path("/keel.v1.TokenService/ExchangeApiKey");
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(TenantServiceServer::new(TenantApi(core.clone())))
        .add_service(LicenseServiceServer::new(LicenseApi(core.clone())))
        .add_service(TokenServiceServer::new(TokenApi(core)));
    let http = axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks_handler))
        .with_state(signing);
    mesh.serve(router, http).await
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
