//! gRPC handlers: validate, authorize (and audit), call the domain, answer.

pub mod convert;
mod license;
mod tenant;
mod token;

use std::sync::Arc;

use cqrs_es::EventStore;
use cqrs_es::persist::PersistedEventStore;
use keel_auth::Principal;
use keel_bus::audit::{AuditRecord, AuditResult};
use keel_proto::v1::{TenantRef, tenant_ref};
use keel_store::{EventRepository, Framework, Metadata, Store};
use tonic::{Request, Status};

use crate::crypto::DataKeys;
use crate::domain::{Tenant, TenantCommand, TenantError};
use crate::error::{Error, Result};
use crate::signing::SigningKeys;
use crate::tokens::ApiKeys;

pub use license::LicenseApi;
pub use tenant::TenantApi;
pub use token::TokenApi;

pub const SERVICE: &str = "tenant";

/// What every handler shares.
pub struct Core {
    pub store: Store,
    pub cqrs: Framework<Tenant>,
    pub loader: PersistedEventStore<EventRepository, Tenant>,
    pub data_keys: DataKeys,
    /// The token key ring (access tokens, `/.well-known/jwks.json`).
    pub signing: SigningKeys,
    /// The license key ring (licenses only, `/.well-known/license-jwks.json`).
    pub license_keys: SigningKeys,
    pub api_keys: ApiKeys,
    /// The service's audit outbox: every record of every call goes there.
    pub audit: keel_store::audit::AuditLog,
    pub tables: crate::store::TenantTables,
    /// Buckets of `ExchangeApiKey`, the one public call: per presented key and per source address.
    pub exchange_limiter: std::sync::Arc<keel_auth::RateLimiter>,
    /// Namespaces the exchange buckets (the installation's bus prefix).
    pub limiter_scope: String,
}

/// The caller of one request: who, from where, in which trace.
pub struct Call {
    pub principal: Option<Principal>,
    /// Over TLS: whether the caller presented a client certificate (verified against the mesh
    /// CA by the TLS layer); `None` on a plaintext connection.
    pub client_cert: Option<bool>,
    pub source_ip: String,
    pub traceparent: String,
    pub request_id: String,
}

impl Call {
    pub fn of<T>(req: &Request<T>) -> Self {
        let header = |k: &str| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let traceparent = keel_runtime::telemetry::call_traceparent(header("traceparent").as_deref());
        let request_id = header("x-request-id")
            .filter(|r| r.len() <= 128)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let tls = req
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .is_some();
        Self {
            principal: keel_auth::from_request(req).ok().cloned(),
            client_cert: tls.then(|| req.peer_certs().is_some_and(|c| !c.is_empty())),
            source_ip: req
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| "unknown".into()),
            traceparent,
            request_id,
        }
    }

    pub fn principal(&self) -> Result<&Principal, Status> {
        self.principal
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))
    }

    pub fn actor(&self) -> String {
        self.principal
            .as_ref()
            .map(Principal::actor)
            .unwrap_or_else(|| "system".into())
    }

    pub fn trace_id(&self) -> Option<String> {
        keel_runtime::telemetry::parse_traceparent(&self.traceparent).map(|(t, _)| t)
    }

    pub fn metadata(&self, tenant_id: &str) -> Metadata {
        Metadata::new(tenant_id, self.actor())
            .with_traceparent(Some(self.traceparent.clone()))
            .with_request_id(Some(self.request_id.clone()))
    }
}

/// A tenant reference, checked without resolving it: present, and a well-formed id or slug.
pub fn check_ref(reference: Option<&TenantRef>) -> Result<&tenant_ref::Ref, Status> {
    let reference = reference
        .and_then(|r| r.r#ref.as_ref())
        .ok_or_else(|| keel_runtime::status::invalid_argument("tenant", "required"))?;
    match reference {
        tenant_ref::Ref::Id(id) => {
            if !keel_events::subjects::is_valid_token(id) {
                return Err(keel_runtime::status::invalid_argument(
                    "tenant.id",
                    "must be a tenant id",
                ));
            }
        }
        tenant_ref::Ref::Slug(slug) => {
            crate::domain::validate::slug("tenant.slug", slug).map_err(Error::from)?;
        }
    }
    Ok(reference)
}

impl Core {
    /// Records an audit record of a call on `tenant` (`*`: the platform) that made no change of
    /// its own (a change is recorded by [`Core::execute`], in the same statement).
    pub async fn audit(
        &self,
        call: &Call,
        tenant: &str,
        action: &str,
        resource: String,
        result: AuditResult,
        reason: Option<String>,
    ) {
        self.audit_as(call.actor(), call, tenant, action, resource, result, reason)
            .await;
    }

    /// As [`Core::audit`] for a call whose actor is not its principal (an API key exchange).
    #[allow(clippy::too_many_arguments)]
    pub async fn audit_as(
        &self,
        actor: String,
        call: &Call,
        tenant: &str,
        action: &str,
        resource: String,
        result: AuditResult,
        reason: Option<String>,
    ) {
        let _ = self
            .audit
            .record(&self.record_of(actor, call, tenant, action, resource, result, reason))
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    fn record_of(
        &self,
        actor: String,
        call: &Call,
        tenant: &str,
        action: &str,
        resource: String,
        result: AuditResult,
        reason: Option<String>,
    ) -> AuditRecord {
        AuditRecord::new(
            actor,
            tenant,
            SERVICE,
            action,
            resource,
            result,
            call.source_ip.clone(),
        )
        .with_trace(call.trace_id())
        .with_reason(reason)
    }

    fn denial<'a>(&'a self, call: &Call, tenant_id: &str, action: &'a str) -> keel_auth::audit::Denial<'a> {
        keel_auth::audit::Denial {
            audit: &self.audit,
            service: SERVICE,
            action,
            resource: format!("tenant/{tenant_id}"),
            source_ip: call.source_ip.clone(),
            trace_id: call.trace_id(),
        }
    }

    /// Checks `scope` on `tenant_id`; a refusal is audited as `denied`.
    pub async fn authorize(
        &self,
        call: &Call,
        scope: &str,
        tenant_id: &str,
        action: &str,
    ) -> Result<(), Status> {
        self.denial(call, tenant_id, action)
            .require(call.principal()?, scope, tenant_id)
            .await
    }

    /// Platform-only calls with a scope of their own (operators, or platform accounts such as
    /// provisioning's holding `scope`); a refusal is audited.
    pub async fn authorize_platform(
        &self,
        call: &Call,
        scope: &str,
        tenant_id: &str,
        action: &str,
    ) -> Result<(), Status> {
        self.denial(call, tenant_id, action)
            .require_platform(call.principal()?, scope, tenant_id, call.client_cert)
            .await
    }

    /// Operator-only calls; a refusal is audited on `tenant_id` (or the platform).
    pub async fn authorize_operator(&self, call: &Call, tenant_id: &str, action: &str) -> Result<(), Status> {
        self.denial(call, tenant_id, action)
            .require_operator(call.principal()?, tenant_id)
            .await
    }

    /// A tenant reference as an id. Slugs are resolved; for a caller who is not an operator an
    /// unknown slug is indistinguishable from someone else's (PERMISSION_DENIED, not NOT_FOUND).
    pub async fn resolve(
        &self,
        call: &Call,
        reference: Option<&TenantRef>,
        scope: &str,
    ) -> Result<String, Status> {
        match check_ref(reference)? {
            tenant_ref::Ref::Id(id) => Ok(id.clone()),
            tenant_ref::Ref::Slug(slug) => {
                let found = self.tables.by_slug(slug).await?;
                match found {
                    Some(id) => Ok(id),
                    None if call.principal()?.is_operator() => Err(Error::NotFound("tenant").into()),
                    None => Err(keel_runtime::status::permission_denied(
                        "MISSING_SCOPE",
                        format!("missing scope {scope} for this tenant"),
                    )),
                }
            }
        }
    }

    /// The tenant's current state and version (0 if it does not exist).
    pub async fn load(&self, tenant_id: &str) -> Result<(Tenant, usize)> {
        let ctx = self
            .loader
            .load_aggregate(tenant_id)
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok((ctx.aggregate, ctx.current_sequence))
    }

    pub async fn load_existing(&self, tenant_id: &str) -> Result<(Tenant, usize)> {
        let (t, v) = self.load(tenant_id).await?;
        if v == 0 {
            return Err(Error::Domain(TenantError::NotFound));
        }
        Ok((t, v))
    }

    /// Runs a command without auditing it: for calls that audit the outcome themselves, on
    /// their own resource (a key revocation audits `api-key/<id>`).
    pub async fn record(&self, call: &Call, tenant_id: &str, command: TenantCommand) -> Result<()> {
        self.cqrs
            .execute_with_metadata(tenant_id, command, call.metadata(tenant_id).into_map())
            .await
            .map_err(Error::from)
    }

    /// Runs a command and audits its outcome: the `success` record commits in the same
    /// statement as the command's events (see [`keel_store::audit`]), a failure is recorded as
    /// `failed` with the error.
    pub async fn execute(
        &self,
        call: &Call,
        tenant_id: &str,
        action: &str,
        command: TenantCommand,
    ) -> Result<(), Status> {
        let success = self.record_of(
            call.actor(),
            call,
            tenant_id,
            action,
            format!("tenant/{tenant_id}"),
            AuditResult::Success,
            None,
        );
        let change = async {
            self.cqrs
                .execute_with_metadata(tenant_id, command, call.metadata(tenant_id).into_map())
                .await
                .map_err(Error::from)
        };
        self.audit.change(success, change).await.map_err(Into::into)
    }
}

/// Shared by the three gRPC services.
pub type Shared = Arc<Core>;
