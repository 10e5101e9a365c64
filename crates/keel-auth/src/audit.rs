//! Authorization that leaves a trace: a refused call is recorded as a `denied` audit record (in
//! the service's audit outbox, [`keel_store::audit`]) on
//! the **caller's** tenant audit subject (the target is named inside the record), the same way
//! in every service. Recording it on the target's subject would let any tenant write into
//! another tenant's audit stream and timeline.

use keel_bus::audit::{AuditRecord, AuditResult};
use keel_store::audit::AuditLog;
use tonic::{Request, Status};

use crate::principal::{Principal, from_request};

/// The caller's address as audit records carry it.
pub fn source_ip<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// What a refusal is recorded as.
pub struct Denial<'a> {
    pub audit: &'a AuditLog,
    pub service: &'a str,
    pub action: &'a str,
    pub resource: String,
    pub source_ip: String,
    pub trace_id: Option<String>,
}

impl Denial<'_> {
    async fn record(&self, principal: &Principal, target: &str, status: &Status) {
        tracing::Span::current().record("keel.auth", "denied");
        let caller = match principal.claims.tenant.as_str() {
            "*" => keel_bus::audit::PLATFORM_TENANT,
            t => t,
        };
        let record = AuditRecord::new(
            principal.actor(),
            caller,
            self.service,
            self.action,
            self.resource.clone(),
            AuditResult::Denied,
            self.source_ip.clone(),
        )
        .with_trace(self.trace_id.clone())
        .with_reason(Some(format!("{} (target tenant {target})", status.message())));
        let _ = self.audit.record(&record).await;
    }

    /// `scope` on `tenant_id`, or PERMISSION_DENIED naming the scope, audited.
    pub async fn require(&self, principal: &Principal, scope: &str, tenant_id: &str) -> Result<(), Status> {
        if let Err(status) = principal.require(scope, tenant_id) {
            self.record(principal, tenant_id, &status).await;
            return Err(status);
        }
        Ok(())
    }

    /// Operators or platform accounts holding `scope` (see [`Principal::require_platform`]).
    /// Over TLS (`client_cert` is `Some`), a platform service account must also have presented
    /// its mesh client certificate (mTLS): its key alone is not enough.
    pub async fn require_platform(
        &self,
        principal: &Principal,
        scope: &str,
        tenant_id: &str,
        client_cert: Option<bool>,
    ) -> Result<(), Status> {
        let outcome = principal.require_platform(scope).and_then(|()| {
            if !principal.is_operator() && client_cert == Some(false) {
                Err(keel_runtime::status::permission_denied(
                    "CLIENT_CERTIFICATE_REQUIRED",
                    "a platform service account calls with its mesh client certificate (mTLS)",
                ))
            } else {
                Ok(())
            }
        });
        if let Err(status) = outcome {
            self.record(principal, tenant_id, &status).await;
            return Err(status);
        }
        Ok(())
    }

    /// Operators only, audited on `tenant_id` (or the platform for `*`).
    pub async fn require_operator(&self, principal: &Principal, tenant_id: &str) -> Result<(), Status> {
        if let Err(status) = principal.require_operator() {
            self.record(principal, tenant_id, &status).await;
            return Err(status);
        }
        Ok(())
    }
}

/// The principal of `req` and its audited check of `scope` on `tenant_id`.
pub async fn authorize<T>(
    audit: &AuditLog,
    service: &str,
    action: &str,
    req: &Request<T>,
    scope: &str,
    tenant_id: &str,
) -> Result<(), Status> {
    let principal = from_request(req)?;
    Denial {
        audit,
        service,
        action,
        resource: format!("tenant/{tenant_id}"),
        source_ip: source_ip(req),
        trace_id: None,
    }
    .require(principal, scope, tenant_id)
    .await
}
