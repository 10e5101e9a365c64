//! The provisioning service's table of contents: its settings, its store, the trigger
//! projection, the saga executor and its API. Everything else is the shared assembly.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cqrs_es::persist::PersistedEventStore;
use keel_bus::StreamKind;
use keel_proto::v1::provisioning_service_server::ProvisioningServiceServer;
use keel_runtime::Service;
use keel_runtime::nats::authority::UserSigner;
use keel_service::Assembly;
use keel_store::projection::ProjectionConfig;
use keel_tenancy::TenantClient;
use serde::{Deserialize, Serialize};

use crate::api::ProvisioningApi;
use crate::domain::faults::Faults;
use crate::projections::Triggers;
use crate::steps::Systems;
use crate::workers::{Executor, Leases};

const GRPC_SERVICES: &[&str] = &["keel.v1.ProvisioningService"];

/// `KEEL_PROVISIONING_*` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `KEEL_PROVISIONING_SCHEMA`: the PostgreSQL schema the service owns.
    pub schema: String,
    /// `KEEL_PROVISIONING_API_KEY`: provisioning's own platform key, the saga's identity when
    /// calling the tenant service (`keelctl token create-operator-key --name provisioning` with
    /// `keel_tenancy::client::SCOPES_NEEDED`; `keelctl dev up` makes one). Falls back to
    /// `KEEL_BOOTSTRAP_TOKEN` with a warning at start.
    pub api_key: Option<String>,
    /// `KEEL_PROVISIONING_GITOPS_DIR`: where tenant manifests are written.
    pub gitops_dir: PathBuf,
    /// `KEEL_PROVISIONING_RESOURCE_PREFIX`: replaced by the shared `KEEL_RESOURCE_PREFIX`, which
    /// every service's auth layer reads the quota hashes under; accepted only when equal to it,
    /// so the two can never name different keys.
    pub resource_prefix: String,
    /// `KEEL_PROVISIONING_CONCURRENCY`: runs driven at once (one per tenant).
    pub concurrency: usize,
    /// `KEEL_PROVISIONING_FAULTS`: fault injection for tests and drills, e.g. `database:2`.
    pub faults: String,
    /// `KEEL_PROVISIONING_NATS_SIGNER_FILE`: the NATS user-signing key (`keelctl nats signer`)
    /// that tenants' audit credentials are issued with; without it IssueAuditCredentials is
    /// FAILED_PRECONDITION.
    pub nats_signer_file: Option<PathBuf>,
    /// `KEEL_PROVISIONING_AUDIT_CREDS_TTL_SECS`: how long issued audit credentials last.
    pub audit_creds_ttl_secs: u64,
    /// `KEEL_PROVISIONING_LEASE_SECS`: how long a replica's claim on a tenant's runs lasts
    /// unrenewed (renewed every third of it while driving): the longest a dead replica's run
    /// waits before another replica resumes it.
    pub lease_secs: u64,
    /// `KEEL_PROVISIONING_COMPENSATION_ATTEMPTS`: attempts at undoing a step (with backoff from
    /// 500 ms to 60 s) before it is abandoned with a `CompensationAbandoned` alert.
    pub compensation_attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            schema: "provisioning".into(),
            api_key: None,
            gitops_dir: PathBuf::from(".keel/gitops"),
            resource_prefix: String::new(),
            concurrency: 64,
            faults: String::new(),
            nats_signer_file: None,
            audit_creds_ttl_secs: 24 * 3600,
            lease_secs: 15,
            compensation_attempts: crate::domain::run::MAX_COMPENSATION_ATTEMPTS,
        }
    }
}

pub async fn run(rt: Service, settings: Settings) -> anyhow::Result<()> {
    let mut mesh = Assembly::start(rt).await?;
    let (db, store) = mesh
        .event_sourced(&settings.schema, sqlx::migrate!("./migrations"))
        .await?;

    let api_key = match (&settings.api_key, &mesh.config().bootstrap_token) {
        (Some(key), _) => key.clone(),
        (None, Some(bootstrap)) => {
            tracing::warn!(
                event = "provisioning.bootstrap_key",
                "KEEL_PROVISIONING_API_KEY is not set: the saga runs with the bootstrap operator key; \
                 give provisioning a platform key of its own (tenant:read, tenant:lifecycle, \
                 license:read, license:issue)"
            );
            bootstrap.clone()
        }
        (None, None) => anyhow::bail!(
            "KEEL_PROVISIONING_API_KEY (or KEEL_BOOTSTRAP_TOKEN) must hold a key for the tenant service"
        ),
    };
    if !(1..=3600).contains(&settings.lease_secs) {
        anyhow::bail!("KEEL_PROVISIONING_LEASE_SECS must be between 1 and 3600");
    }
    if !(1..=100).contains(&settings.compensation_attempts) {
        anyhow::bail!("KEEL_PROVISIONING_COMPENSATION_ATTEMPTS must be between 1 and 100");
    }
    let prefix = resource_prefix(&settings.resource_prefix, &mesh.config().resource_prefix)?;
    let faults = Faults::parse(&settings.faults).map_err(anyhow::Error::msg)?;
    if faults != Faults::default() {
        tracing::warn!(faults = ?faults, "fault injection is on");
    }
    let systems = Systems {
        pg: db.pool().clone(),
        database_url: mesh.config().database_url.clone(),
        bus: mesh.bus().clone(),
        redis: mesh.redis().await?,
        gitops_dir: settings.gitops_dir.clone(),
        master: mesh.master_key().clone(),
        tenant: TenantClient::new(&mesh.config().tenant_addr, mesh.tls(), api_key)?,
    };
    let executor = Arc::new(Executor {
        leases: Leases::new(
            store.pool().clone(),
            std::time::Duration::from_secs(settings.lease_secs),
        ),
        compensation_attempts: settings.compensation_attempts,
        cqrs: store.framework(()),
        loader: PersistedEventStore::new_event_store(store.repository()),
        store,
        systems,
        faults,
        prefix,
        steps: Executor::all_steps(),
        concurrency: settings.concurrency,
    });

    let mut triggers = ProjectionConfig::new(StreamKind::Events);
    triggers.filter_subject = "keel.evt.*.tenant.>".into();
    mesh.project(db.pool().clone(), Triggers, triggers);
    let saga = executor.clone().run(mesh.stop_token());
    mesh.spawn("saga executor", async move {
        saga.await;
        Ok(())
    });

    let signer = match &settings.nats_signer_file {
        Some(path) => Some(Arc::new(
            UserSigner::from_file(path).context("KEEL_PROVISIONING_NATS_SIGNER_FILE")?,
        )),
        None => None,
    };
    if !(60..=30 * 24 * 3600).contains(&settings.audit_creds_ttl_secs) {
        anyhow::bail!("KEEL_PROVISIONING_AUDIT_CREDS_TTL_SECS must be between 60 and 2592000");
    }
    let api = ProvisioningApi {
        executor,
        signer,
        creds_ttl: std::time::Duration::from_secs(settings.audit_creds_ttl_secs),
        audit: mesh.audit_log()?,
    };
    let auth = mesh.auth(None).await?;
    let router = mesh
        .grpc(auth, GRPC_SERVICES)
        .await?
        .add_service(ProvisioningServiceServer::new(api));
    mesh.serve(router, axum::Router::new()).await
}

/// The prefix of tenants' resource names: the shared `KEEL_RESOURCE_PREFIX`, which the other
/// services read the quota hashes under. The old `KEEL_PROVISIONING_RESOURCE_PREFIX` must agree
/// with it; set alone it is refused, because the other services would read other keys.
fn resource_prefix(own: &str, shared: &str) -> anyhow::Result<String> {
    let own = own.trim();
    if !own.is_empty() && own != shared {
        anyhow::bail!(
            "KEEL_PROVISIONING_RESOURCE_PREFIX ({own:?}) differs from KEEL_RESOURCE_PREFIX ({shared:?}): \
             set KEEL_RESOURCE_PREFIX for every service instead, which all of them read tenant \
             quotas under"
        );
    }
    Ok(shared.to_owned())
}

#[cfg(test)]
mod tests {
    use super::resource_prefix;

    #[test]
    fn the_resource_prefix_is_the_shared_one() {
        assert_eq!(resource_prefix("", "t1_").unwrap(), "t1_");
        assert_eq!(resource_prefix("t1_", "t1_").unwrap(), "t1_");
        assert_eq!(resource_prefix("", "").unwrap(), "");
        assert!(
            resource_prefix("t1_", "").is_err(),
            "set alone it would split the keys"
        );
        assert!(resource_prefix("a_", "b_").is_err());
    }
}
