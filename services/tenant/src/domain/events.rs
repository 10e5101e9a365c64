//! What happened to a tenant: the events the aggregate records (stored as `keel.tenant.<Event>.v1`).

use cqrs_es::DomainEvent;
use keel_tenancy::Tier;
use serde::{Deserialize, Serialize};

use super::tenant::{Encrypted, Role};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantCreated {
        tenant_id: String,
        name: String,
        slug: String,
        tier: Tier,
        owner_member_id: String,
        owner_email_enc: Encrypted,
        owner_email_digest: String,
        request_id: String,
    },
    TenantTierChanged {
        from: Tier,
        to: Tier,
    },
    TenantSuspended {
        reason: String,
    },
    TenantReactivated {},
    TenantProvisioningStarted {},
    TenantProvisioned {},
    TenantProvisioningFailed {
        reason: String,
    },
    TenantActivated {},
    TenantDeletionRequested {},
    TenantDeleted {},
    MemberInvited {
        member_id: String,
        email_enc: Encrypted,
        email_digest: String,
        role: Role,
    },
    MemberRoleChanged {
        member_id: String,
        role: Role,
    },
    MemberRemoved {
        member_id: String,
    },
    LicenseIssued {
        license_id: String,
        tier: Tier,
        expires_at: String,
    },
    ServiceAccountCreated {
        account_id: String,
        name: String,
        scopes: Vec<String>,
    },
    ApiKeyIssued {
        account_id: String,
        key_id: String,
    },
    ApiKeyRevoked {
        account_id: String,
        key_id: String,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        let name = match self {
            TenantEvent::TenantCreated { .. } => "TenantCreated",
            TenantEvent::TenantTierChanged { .. } => "TenantTierChanged",
            TenantEvent::TenantSuspended { .. } => "TenantSuspended",
            TenantEvent::TenantReactivated {} => "TenantReactivated",
            TenantEvent::TenantProvisioningStarted {} => "TenantProvisioningStarted",
            TenantEvent::TenantProvisioned {} => "TenantProvisioned",
            TenantEvent::TenantProvisioningFailed { .. } => "TenantProvisioningFailed",
            TenantEvent::TenantActivated {} => "TenantActivated",
            TenantEvent::TenantDeletionRequested {} => "TenantDeletionRequested",
            TenantEvent::TenantDeleted {} => "TenantDeleted",
            TenantEvent::MemberInvited { .. } => "MemberInvited",
            TenantEvent::MemberRoleChanged { .. } => "MemberRoleChanged",
            TenantEvent::MemberRemoved { .. } => "MemberRemoved",
            TenantEvent::LicenseIssued { .. } => "LicenseIssued",
            TenantEvent::ServiceAccountCreated { .. } => "ServiceAccountCreated",
            TenantEvent::ApiKeyIssued { .. } => "ApiKeyIssued",
            TenantEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
