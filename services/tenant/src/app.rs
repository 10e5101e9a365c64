//! The tenant service's table of contents: its settings, its store and projection, its APIs and
//! its two JWKS endpoints (token keys, license keys). Everything else is the shared assembly (`keel-service`).

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
    /// `KEEL_TENANT_BOOTSTRAP`: `on` (default) registers `KEEL_BOOTSTRAP_TOKEN` as the bootstrap
    /// operator key; `off` revokes the bootstrap key at start and ignores the token — refused
    /// (the service does not start) while no other operator key is active.
    pub bootstrap: Bootstrap,
}

/// Whether the bootstrap operator key is in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrap {
    #[default]
    On,
    Off,
}

impl<'de> Deserialize<'de> for Bootstrap {
    /// By hand: the error names the field (in backticks, the way the settings loader finds the
    /// variable to report), which serde's "unknown variant" message does not.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "on" => Ok(Bootstrap::On),
            "off" => Ok(Bootstrap::Off),
            _ => Err(serde::de::Error::custom("`bootstrap` must be on or off")),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "tenant".into(),
            bootstrap: Bootstrap::On,
        }
    }
}

/// Registers or disables the bootstrap key as `setting` and `token` say.
async fn bootstrap(api_keys: &ApiKeys, setting: Bootstrap, token: Option<&str>) -> anyhow::Result<()> {
    use crate::tokens::{BootstrapAction as A, Disabled};
    match (setting, token) {
        (Bootstrap::On, None) => tracing::info!("KEEL_BOOTSTRAP_TOKEN not set: no bootstrap operator key"),
        (Bootstrap::On, Some(token)) => match api_keys.bootstrap(token).await.context("bootstrap token")? {
            A::Register | A::Keep | A::Replace => {}
            A::StayRevoked => tracing::warn!(
                "the bootstrap key was revoked: KEEL_BOOTSTRAP_TOKEN stays refused (a new token would re-enable it)"
            ),
            A::Reenable => {
                tracing::warn!("the revoked bootstrap key is re-enabled with a new KEEL_BOOTSTRAP_TOKEN")
            }
        },
        (Bootstrap::Off, token) => {
            match api_keys
                .disable_bootstrap()
                .await
                .context("disabling the bootstrap key")?
            {
                Ok(Disabled::Revoked) => {
                    tracing::info!("KEEL_TENANT_BOOTSTRAP=off: the bootstrap key is revoked")
                }
                Ok(Disabled::AlreadyOff) => {}
                Err(_) => anyhow::bail!(
                    "KEEL_TENANT_BOOTSTRAP=off refused: no other operator key is active, nobody could operate \
                     the platform; create one first (keelctl token create-operator-key) or leave the setting on"
                ),
            }
            if token.is_some() {
                tracing::info!("KEEL_TENANT_BOOTSTRAP=off: KEEL_BOOTSTRAP_TOKEN is ignored");
            }
        }
    }
    Ok(())
}

pub async fn run(rt: Service, settings: Settings) -> anyhow::Result<()> {
    let mut mesh = Assembly::start(rt).await?;
    let (db, store) = mesh
        .event_sourced(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;

    let master = mesh.master_key().clone();
    let signing = SigningKeys::new(db.pool().clone(), master.clone());
    signing.active().await.context("signing key")?;
    let license_keys = SigningKeys::licenses(db.pool().clone(), master.clone());
    license_keys.active().await.context("license signing key")?;
    let api_keys = ApiKeys::new(db.pool().clone());
    bootstrap(
        &api_keys,
        settings.bootstrap,
        mesh.config().bootstrap_token.as_deref(),
    )
    .await?;
    let core = Arc::new(Core {
        cqrs: store.framework(()),
        loader: PersistedEventStore::new_event_store(store.repository()),
        data_keys: DataKeys::new(db.pool().clone(), master),
        signing: signing.clone(),
        license_keys: license_keys.clone(),
        api_keys,
        audit: mesh.audit_log()?,
        store: store.clone(),
        tables: crate::store::TenantTables::new(db.pool().clone()),
        exchange_limiter: Arc::new(keel_auth::RateLimiter::connect(&mesh.config().redis_url).await),
        limiter_scope: mesh.config().bus_prefix.clone(),
    });

    let mut view = ProjectionConfig::new(StreamKind::Events);
    view.filter_subject = "keel.evt.*.tenant.>".into();
    mesh.project(db.pool().clone(), TenantsView, view);

    // The tenant service verifies against its own JWKS endpoint unless told otherwise.
    let own_jwks = format!("{}/.well-known/jwks.json", mesh.http_url());
    let auth = mesh
        .auth(Some(&own_jwks))
        .await?
        .with_public_path("/keel.v1.TokenService/ExchangeApiKey");
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(TenantServiceServer::new(TenantApi(core.clone())))
        .add_service(LicenseServiceServer::new(LicenseApi(core.clone())))
        .add_service(TokenServiceServer::new(TokenApi(core)));
    let http = axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks_handler).with_state(signing))
        .route(
            "/.well-known/license-jwks.json",
            get(jwks_handler).with_state(license_keys),
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_runtime::{Config, ConfigOrPrint};

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        match Config::from_vars("tenant", ["keel-tenant".to_owned()], vars).unwrap() {
            ConfigOrPrint::Run(c) | ConfigOrPrint::Print(c) => {
                c.settings::<Settings>().map_err(|e| e.to_string())
            }
        }
    }

    #[test]
    fn bootstrap_is_on_unless_set_off_and_a_bad_value_names_the_variable() {
        assert_eq!(settings(&[]).unwrap().bootstrap, Bootstrap::On);
        assert_eq!(
            settings(&[("KEEL_TENANT_BOOTSTRAP", "off")]).unwrap().bootstrap,
            Bootstrap::Off
        );
        assert_eq!(
            settings(&[("KEEL_TENANT_BOOTSTRAP", "on")]).unwrap().bootstrap,
            Bootstrap::On
        );
        let e = settings(&[("KEEL_TENANT_BOOTSTRAP", "maybe")]).unwrap_err();
        assert!(e.contains("KEEL_TENANT_BOOTSTRAP=\"maybe\""), "{e}");
    }
}
