//! The remote steps: the tenant service's side of a run — confirm the tenant's state before a
//! destructive plan, begin (PROVISIONING), license, activate (ACTIVE, once every local step
//! checks ready), finalize a deletion. Each is idempotent because the client reads the tenant's
//! status first; none has anything to undo or to check.

use async_trait::async_trait;
use keel_proto::v1 as pb;
use serde_json::json;

use super::{Step, StepContext, StepError, Systems};

/// The remote steps, by the names the run plans use.
pub fn all() -> Vec<Box<dyn Step>> {
    [
        Remote::Confirm {
            name: "confirm-deleting",
            wanted: pb::TenantStatus::Deleting,
        },
        Remote::Confirm {
            name: "confirm-suspended",
            wanted: pb::TenantStatus::Suspended,
        },
        Remote::Confirm {
            name: "confirm-active",
            wanted: pb::TenantStatus::Active,
        },
        Remote::ConfirmTier,
        Remote::Begin,
        Remote::License,
        Remote::Activate,
        Remote::Finalize,
    ]
    .into_iter()
    .map(|r| Box::new(r) as Box<dyn Step>)
    .collect()
}

enum Remote {
    /// Refuses (permanently) to go on unless the tenant service says the tenant is `wanted`.
    Confirm {
        name: &'static str,
        wanted: pb::TenantStatus,
    },
    /// Refuses (permanently) unless the tenant service has the tenant at the run's tier.
    ConfirmTier,
    Begin,
    License,
    /// A tenant becomes ACTIVE only when every local resource is there as it should be.
    Activate,
    Finalize,
}

#[async_trait]
impl Step for Remote {
    fn name(&self) -> &'static str {
        match self {
            Remote::Confirm { name, .. } => name,
            Remote::ConfirmTier => "confirm-tier",
            Remote::Begin => "begin",
            Remote::License => "license",
            Remote::Activate => "activate",
            Remote::Finalize => "finalize",
        }
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let (tenant, tp) = (&ctx.tenant_id, ctx.traceparent.as_deref());
        match self {
            Remote::Confirm { wanted, .. } => {
                let status = sys.tenant.status(tenant, tp).await?;
                if status != *wanted {
                    return Err(StepError::Permanent(format!(
                        "the tenant service says the tenant is {}, not {}: refusing the run",
                        status.as_str_name(),
                        wanted.as_str_name()
                    )));
                }
                Ok(json!({ "status": status.as_str_name() }))
            }
            Remote::ConfirmTier => {
                let t = sys.tenant.get(tenant, tp).await?;
                let tier = pb::Tier::try_from(t.tier).unwrap_or(pb::Tier::Unspecified);
                let wanted = format!("TIER_{}", ctx.tier.to_ascii_uppercase());
                if tier.as_str_name() != wanted {
                    return Err(StepError::Permanent(format!(
                        "the tenant service says the tenant is {}, not {wanted}: refusing the run",
                        tier.as_str_name()
                    )));
                }
                Ok(json!({ "tier": ctx.tier }))
            }
            Remote::Begin => {
                sys.tenant.begin(tenant, tp).await?;
                Ok(json!({}))
            }
            Remote::License => {
                let id = sys.tenant.license(tenant, &ctx.tier, tp).await?;
                Ok(json!({ "license_id": id }))
            }
            Remote::Activate => {
                for step in super::local() {
                    if !step.check(sys, ctx).await? {
                        return Err(StepError::Transient(format!("{} is not ready", step.name())));
                    }
                }
                sys.tenant.activate(tenant, tp).await?;
                Ok(json!({}))
            }
            Remote::Finalize => {
                sys.tenant.finalize_deletion(tenant, tp).await?;
                Ok(json!({}))
            }
        }
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}
