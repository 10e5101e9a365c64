//! The saga's steps, each against a real system and each idempotent: `apply` converges the
//! tenant's resource to the desired state (safe to run twice), `compensate` removes it (safe to
//! run twice, reports what it removed), `check` says whether it is there and ready.

use std::path::PathBuf;

use async_trait::async_trait;
use keel_bus::Bus;
use sqlx::PgPool;

pub mod database;
mod failure;
pub mod kubernetes;
pub mod manifests;
pub mod messaging;
pub mod quotas;
mod scram;
pub mod tenant;

pub use database::{credentials, database};
pub use manifests::manifests;
pub use messaging::messaging;
pub use quotas::quotas;

/// The local steps (those against PostgreSQL, NATS, Redis and disk), in provisioning order.
pub fn local() -> Vec<Box<dyn Step>> {
    vec![database(), messaging(), quotas(), manifests()]
}

/// Every step a run plan can name: the local ones and the tenant service's.
pub fn all() -> Vec<Box<dyn Step>> {
    local().into_iter().chain(tenant::all()).collect()
}

/// The desired state of one tenant's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepContext {
    pub tenant_id: String,
    pub slug: String,
    /// low | mid | high | business
    pub tier: String,
    /// Suspended tenants keep their resources but run no workloads and cannot log in.
    pub suspended: bool,
    pub names: ResourceNames,
    /// The run's trace, carried to the tenant service by the remote steps.
    pub traceparent: Option<String>,
}

/// Names of a tenant's resources. `prefix` isolates test runs (and installations) that share
/// servers: PostgreSQL roles are cluster-wide, JetStream buckets server-wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceNames {
    /// `t_<prefix><slug with - as _>`
    pub schema: String,
    /// `<schema>_app`
    pub role: String,
    /// `<PREFIX>TENANT_<SLUG>` (JetStream KV bucket; [A-Za-z0-9_-])
    pub kv_bucket: String,
    /// Durable consumer on KEEL_AUDIT for the tenant's audit subscribers.
    pub audit_consumer: String,
    /// `keel:<prefix>quota:<tenant_id>` (`keel_auth::quota::key`: what every auth layer reads)
    pub redis_key: String,
    /// `<gitops dir>/tenants/<prefix><slug>/`
    pub manifest_dir: PathBuf,
    /// Kubernetes namespace: `tenant-<prefix><slug>` (DNS label)
    pub namespace: String,
}

impl ResourceNames {
    pub fn new(prefix: &str, tenant_id: &str, slug: &str, gitops_dir: &std::path::Path) -> Self {
        let schema = format!("t_{}{}", prefix.replace('-', "_"), slug.replace('-', "_"));
        let dns = format!("{}{}", prefix.replace('_', "-"), slug);
        Self {
            role: format!("{schema}_app"),
            kv_bucket: format!(
                "{}TENANT_{}",
                prefix.to_uppercase(),
                slug.to_uppercase().replace('-', "_")
            ),
            audit_consumer: format!("audit-{dns}"),
            redis_key: keel_auth::quota::key(prefix, tenant_id),
            manifest_dir: gitops_dir.join("tenants").join(&dns),
            namespace: format!("tenant-{dns}"),
            schema,
        }
    }
}

/// What a step can fail with; the saga retries transient failures with backoff and
/// compensates after a permanent one.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StepError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, StepError::Permanent(_))
    }
}

impl keel_runtime::Retryable for StepError {
    fn is_retryable(&self) -> bool {
        !self.is_permanent()
    }
}

impl From<keel_tenancy::ClientError> for StepError {
    fn from(e: keel_tenancy::ClientError) -> Self {
        use keel_runtime::Retryable;
        if e.is_retryable() {
            StepError::Transient(e.to_string())
        } else {
            StepError::Permanent(e.to_string())
        }
    }
}

/// The systems steps act on.
#[derive(Clone)]
pub struct Systems {
    /// A PostgreSQL pool with rights to create schemas and roles.
    pub pg: PgPool,
    /// Connection string for connecting as a tenant role (host/port/db of `pg`).
    pub database_url: String,
    pub bus: Bus,
    pub redis: redis::aio::ConnectionManager,
    pub gitops_dir: PathBuf,
    /// Wraps the tenant roles' generated passwords at rest.
    pub master: keel_auth::MasterKey,
    /// The tenant service, for the remote steps.
    pub tenant: std::sync::Arc<keel_tenancy::TenantClient>,
}

#[async_trait]
pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;
    /// Converges the resource to `ctx`; returns a short description of what it did (no secrets).
    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError>;
    /// Removes the resource; returns what was removed (empty when nothing was there).
    async fn compensate(&self, sys: &Systems, ctx: &StepContext) -> Result<Vec<String>, StepError>;
    /// Whether the resource exists and is usable as `ctx` wants it.
    async fn check(&self, sys: &Systems, ctx: &StepContext) -> Result<bool, StepError>;
}
