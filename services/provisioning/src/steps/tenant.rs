//! The remote steps: the tenant service's side of a run — confirm the tenant's state before a
//! destructive plan, begin (PROVISIONING), license, activate (ACTIVE, once every local step
//! checks ready), finalize a deletion. Each is idempotent because the client reads the tenant's
//! status first; none has anything to undo.

use async_trait::async_trait;
use keel_proto::v1 as pb;
use serde_json::json;

use super::{Step, StepContext, StepError, Systems};

/// The remote steps, by the names the run plans use.
pub fn all() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(Confirm {
            name: "confirm-deleting",
            wanted: pb::TenantStatus::Deleting,
        }),
        Box::new(Confirm {
            name: "confirm-suspended",
            wanted: pb::TenantStatus::Suspended,
        }),
        Box::new(Begin),
        Box::new(License),
        Box::new(Activate),
        Box::new(Finalize),
    ]
}

/// Refuses (permanently) to go on unless the tenant service says the tenant is `wanted`.
struct Confirm {
    name: &'static str,
    wanted: pb::TenantStatus,
}

#[async_trait]
impl Step for Confirm {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let status = sys
            .tenant
            .status(&ctx.tenant_id, ctx.traceparent.as_deref())
            .await?;
        if status == self.wanted {
            Ok(json!({ "status": status.as_str_name() }))
        } else {
            Err(StepError::Permanent(format!(
                "the tenant service says the tenant is {}, not {}: refusing the run",
                status.as_str_name(),
                self.wanted.as_str_name()
            )))
        }
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}

struct Begin;
struct License;
struct Activate;
struct Finalize;

#[async_trait]
impl Step for Begin {
    fn name(&self) -> &'static str {
        "begin"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        sys.tenant
            .begin(&ctx.tenant_id, ctx.traceparent.as_deref())
            .await?;
        Ok(json!({}))
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}

#[async_trait]
impl Step for License {
    fn name(&self) -> &'static str {
        "license"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let id = sys
            .tenant
            .license(&ctx.tenant_id, &ctx.tier, ctx.traceparent.as_deref())
            .await?;
        Ok(json!({ "license_id": id }))
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}

#[async_trait]
impl Step for Activate {
    fn name(&self) -> &'static str {
        "activate"
    }

    /// A tenant becomes ACTIVE only when every local resource is there as it should be.
    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        for step in super::local() {
            if !step.check(sys, ctx).await? {
                return Err(StepError::Transient(format!("{} is not ready", step.name())));
            }
        }
        sys.tenant
            .activate(&ctx.tenant_id, ctx.traceparent.as_deref())
            .await?;
        Ok(json!({}))
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}

#[async_trait]
impl Step for Finalize {
    fn name(&self) -> &'static str {
        "finalize"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        sys.tenant
            .finalize_deletion(&ctx.tenant_id, ctx.traceparent.as_deref())
            .await?;
        Ok(json!({}))
    }

    async fn compensate(&self, _: &Systems, _: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(vec![])
    }

    async fn check(&self, _: &Systems, _: &StepContext) -> Result<bool, StepError> {
        Ok(true)
    }
}
